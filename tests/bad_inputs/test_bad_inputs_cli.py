"""Malformed and hostile input through the real CLI, as a demanding user would type it.

Every case must exit non-zero, print no traceback, name the file, key, option or asset on one line, and leave the
user's files as they were: cases that could lose data get their own copy of a run directory or cache, whose bytes
are compared before and after. The cases run two at a time in one fixture (each is a subprocess); the tests then
check one case each, so a failure names its case.
"""

import pytest
from bad_world import CONFIGS, Case, check_case, files, fit, nothing_in, run_cases, slurm, train_with

CASES = [
    # 1. config and option ranges: every numeric key checked once, with its name
    *[Case(f"config-{key}-{value}", train_with(f"{key}-{value}", **{section: {key: value}}), (f"{section}.{key}",))
      for section, key, value in [
          ("training", "learning_rate", float("nan")), ("training", "learning_rate", float("inf")),
          ("training", "learning_rate", -float("inf")), ("training", "seed", -1), ("training", "warmup_ratio", -0.1),
          ("training", "min_lr_ratio", -0.5), ("training", "weight_decay", -0.01),
          ("training", "early_stopping_patience", 0), ("training", "max_steps_per_epoch", -1),
          ("model", "vocab_size", 70000), ("model", "dropout", 1.0), ("data", "start", "2019/13/45"),
          ("data", "start", "01/02/2019"), ("data", "end", "2019-02-30")]],
    Case("config-start-after-end", train_with("start-after-end", data={"start": "2020-01-02", "end": "2019-01-01"}),
         ("data.start", "data.end")),
    Case("set-empty-universe", lambda w: ["train", w.config("plain"), "--set", "data.universe="], ("data.universe",)),
    Case("num-gpus-0", lambda w: ["train", w.config("plain"), "--num-gpus", "0"], ("--num-gpus",)),
    Case("num-gpus-negative", lambda w: ["train", w.config("plain"), "--num-gpus", "-2"], ("--num-gpus",)),
    Case("status-interval-0", lambda w: ["status", "--all", "--root", w.root, "--interval", "0"], ("--interval",)),
    Case("status-watch-interval-negative", lambda w: ["status", "--watch", "--root", w.root, "--interval", "-1"],
         ("--interval",)),
    Case("fit-train-ratio-1.5", fit("--train-ratio", "1.5"), ("train_ratio",), absent=lambda w: w.path("tok.json")),
    Case("fit-train-ratio-negative", fit("--train-ratio", "-0.2"), ("train_ratio",)),
    Case("fit-ratios-leave-no-test", fit("--train-ratio", "0.6", "--val-ratio", "0.5"), ("train_ratio", "val_ratio")),
    Case("fit-vocab-size-70000", fit("--vocab-size", "70000"), ("--vocab-size",)),
    Case("download-start-not-a-date", lambda w: ["data", "download", "--case", "sample", "--data-dir", w.data,
                                                 "--start", "2019/13/45"], ("--start", "2019/13/45")),
    Case("slurm-time-0:99:99", slurm("time", "--time", "0:99:99"), ("--time 0:99:99",), absent=nothing_in("slurm/time")),
    Case("slurm-time-25-hours", slurm("hours", "--time", "1-25:00"), ("--time 1-25:00",)),
    # 2. filesystem errors at the boundary, before any work
    Case("data-dir-is-a-file", lambda w: ["data", "download", "--case", "sample", "--data-dir", w.path("a_file")],
         ("a_file", "is a file")),
    Case("data-dir-under-a-file", lambda w: ["data", "download", "--case", "sample", "--data-dir",
                                             w.path("a_file/sub")], ("a_file/sub", "cannot write")),
    Case("data-dir-read-only", lambda w: ["data", "download", "--case", "sample", "--data-dir", "/proc/marketgpt"],
         ("/proc/marketgpt", "cannot write")),
    Case("fit-output-is-a-folder", lambda w: ["tokenizer", "fit", "--case", "sample", "--data-dir", w.data, "-o",
                                              w.path("sources")], ("sources", "is a folder")),
    Case("fit-output-read-only", lambda w: ["tokenizer", "fit", "--case", "sample", "--data-dir", w.data, "-o",
                                            "/proc/tok.json"], ("/proc", "cannot write")),
    Case("fit-output-under-a-file", lambda w: ["tokenizer", "fit", "--case", "sample", "--data-dir", w.data, "-o",
                                               w.path("a_file/tok.json")], ("a_file", "is a file")),
    Case("slurm-output-is-a-folder", lambda w: ["slurm", CONFIGS / "sample.json", "-o", w.path("sources")],
         ("sources", "is a folder")),
    Case("slurm-log-dir-under-a-file", slurm("logs-under-file", "--log-dir", "a_file/logs"), ("a_file/logs", "cannot write")),
    # 3. dates are never misread: one format per file, ambiguity and intraday candles refused
    Case("dates-day-month-ambiguous", files("ambiguous"), ("XYZ.csv", "ambiguous dates", "--date-format"),
         keep=nothing_in("caches/ambiguous")),
    Case("dates-ambiguous-in-drop-mode", files("ambiguous", "--on-bad-rows", "drop"), ("XYZ.csv", "ambiguous")),
    Case("dates-hourly", files("hourly"), ("XYZ.csv", "intraday timestamps")),
    Case("dates-hourly-in-drop-mode", files("hourly", "--on-bad-rows", "drop"), ("XYZ.csv", "intraday"),
         keep=nothing_in("caches/hourly")),
    Case("dates-unknown-format", files("words"), ("XYZ.csv", "unknown format", "Jan 01 2020")),
    Case("dates-format-not-a-format", files("ambiguous", "--date-format", "%Q"), ("--date-format %Q",)),
    Case("dates-format-wrong-for-the-file", files("ambiguous", "--date-format", "%Y-%m-%d"),
         ("XYZ.csv", "--date-format %Y-%m-%d")),
    Case("dates-format-for-the-sample", lambda w: ["data", "download", "--case", "sample", "--data-dir", w.data,
                                                   "--date-format", "%d/%m/%Y"], ("--date-format", "sample")),
    Case("dates-duplicate-names-both-lines", files("duplicate"), ("XYZ.csv", "line 3", "line 5", "duplicate_date")),
    # 7. messages that name the real cause
    Case("gzip-named-csv", files("gzip"), ("XYZ.csv", "gzip-compressed", "XYZ.csv.gz")),
    Case("parquet-named-csv", files("parquet"), ("XYZ.csv", "Parquet")),
    Case("binary-named-csv", files("binary"), ("XYZ.csv", "not a text CSV")),
    Case("yfinance-offline", lambda w: ["data", "download", "--universe", w.path("universes/xyz.csv"), "--provider",
                                        "yfinance", "--data-dir", w.path("caches/yfinance")],
         ("XYZ", "cannot reach Yahoo Finance"),
         env={"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "ALL_PROXY": ""}),
    Case("universe-is-a-folder", lambda w: ["data", "info", "--case", w.path("sources")], ("sources",)),
    Case("universe-bad-ccxt-market", lambda w: ["data", "info", "--universe", w.path("universes/ccxt.csv")],
         ("ccxt.csv", "line 2", "ccxt market")),
    Case("train-names-every-bad-asset", lambda w: ["train", w.config(
        "two-bad", data={"universe": str(w.path("universes/two_bad.csv")), "provider": f"files:{w.path('sources/bad')}",
                         "data_dir": str(w.path("caches/bad"))}, training={"checkpoint_dir": str(w.path("runs/bad"))})],
         ("AAA", "BBB", "2 asset(s) failed"), keep=nothing_in("runs/bad")),
    # 4. nothing lost or overwritten without asking; 5. run states; 9. resume of a finished run
    Case("run-dir-on-a-finished-run", lambda w: ["train", w.config("plain"), "--run-dir", w.run_copy("finished")],
         ("finished", "already finished", "marketgpt evaluate"), keep=lambda w: w.run_copy("finished")),
    Case("run-dir-on-a-trained-run-without-last", lambda w: [
        "train", w.config("plain"), "--run-dir", w.run_copy("no-last", ("last.pt",))],
         ("no-last", "holds a trained run", "best_model.pt", "another --run-dir"),
         keep=lambda w: w.run_copy("no-last", ("last.pt",))),
    Case("resume-a-finished-run", lambda w: ["train", "--resume", w.run_copy("resume")],
         ("resume", "already finished (2 of 2 epochs"), keep=lambda w: w.run_copy("resume")),
    Case("resume-without-last", lambda w: ["train", "--resume", w.run_copy("resume-no-last", ("last.pt",))],
         ("resume-no-last", "nothing to resume"), keep=lambda w: w.run_copy("resume-no-last", ("last.pt",))),
    Case("run-dir-not-a-run", lambda w: ["train", w.config("plain"), "--run-dir", w.path("sources")],
         ("sources", "not a run directory"), keep=nothing_in("sources")),
    Case("run-dir-under-a-file", lambda w: ["train", w.config("plain"), "--run-dir", w.path("a_file/run")],
         ("a_file", "is a file")),
    Case("checkpoint-dir-under-a-file", train_with("ckpt-file", training={"checkpoint_dir": "a_file/runs"}),
         ("a_file/runs", "training.checkpoint_dir", "is a file")),
    Case("checkpoint-dir-read-only", train_with("ckpt-ro", training={"checkpoint_dir": "/proc/marketgpt"}),
         ("/proc/marketgpt", "training.checkpoint_dir", "cannot write")),
    Case("status-all-with-a-corrupt-log", lambda w: ["status", "--all", "--root", w.path("status_root")],
         ("broken", "training_log.json", "invalid JSON"), keep=nothing_in("status_root")),
    Case("context-longer-than-every-asset", train_with("long-context", model={"context_length": 9000}),
         ("no train windows", "9001"), keep=nothing_in("checkpoints")),
    # 6. injection and path traversal: values that become paths or script lines
    Case("config-name-escapes", train_with("escape", top={"name": "../../escape"}), ("name", "../../escape"),
         absent=lambda w: w.root.parent / "escape"),
    Case("slurm-account-newline", slurm("account", "--account", "acc\n#SBATCH --wrap=touch /tmp/x"), ("--account",),
         absent=nothing_in("slurm/account")),
    Case("slurm-partition-shell", slurm("partition", "--partition", "long; touch x"), ("--partition",),
         absent=nothing_in("slurm/partition")),
    Case("slurm-gpu-type-option", slurm("gpu", "--gpu-type", "a100 --wrap=id"), ("--gpu-type",)),
    Case("slurm-set-newline", slurm("set", "--set", "training.epochs=1\nid"), ("--set",)),
    Case("slurm-log-dir-space", slurm("logs", "--log-dir", "my logs"), ("--log-dir",)),
    Case("universe-yfinance-traversal", lambda w: [
        "data", "download", "--universe", w.universe("traversal", "BTC,crypto,../outside/ETH-USD\n"),
        "--provider", f"files:{w.path('files')}", "--data-dir", w.path("traversal-cache")],
         ("traversal.csv", "line 2", "yfinance", "../outside/ETH-USD"),
         absent=lambda w: w.path("traversal-cache")),
    Case("universe-symbol-traversal", lambda w: [
        "data", "download", "--universe", w.universe("symbol", "../BTC,crypto,\n"), "--provider", "sample",
        "--data-dir", w.path("symbol-cache")], ("symbol.csv", "line 2", "../BTC"),
         absent=lambda w: w.path("symbol-cache")),
]



@pytest.fixture(scope="module")
def outcomes(world):
    return run_cases(CASES, world)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(case, outcomes, world):
    check_case(case, outcomes[case.id], world)


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60

