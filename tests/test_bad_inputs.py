"""Malformed and hostile input through the real CLI, as a demanding user would type it.

Every case must exit non-zero, print no traceback, name the file, key, option or asset on one line, and leave the
user's files as they were: cases that could lose data get their own copy of a run directory or cache, whose bytes
are compared before and after. The cases run two at a time in one fixture (each is a subprocess); the tests then
check one case each, so a failure names its case.
"""

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from helpers import CONFIGS, run_cli, run_dir_of, small_config

from marketgpt.data import load_universe, time_split
from marketgpt.errors import MarketGPTError
from marketgpt.tokenizer import CandleTokenizer

HEADER = "date,open,high,low,close,volume\n"


def candle_lines(dates) -> str:
    return "".join(f"{d},10,12,9,11,100\n" for d in dates)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder with the hash of its bytes: equal snapshots mean nothing was touched."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class World:
    """One temporary folder shared by the cases: the sample universe cached, a finished tiny run, source files."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.lock = threading.Lock()
        self.base = json.loads(small_config(root, "tiny", max_steps_per_epoch=2, epochs=2).read_text())

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
        return path

    def config(self, case: str, top: dict | None = None, **sections) -> Path:
        """The tiny config with some keys changed; raw JSON so that NaN and Infinity pass through as written."""
        raw = json.loads(json.dumps(self.base))
        raw.update(top or {})
        for section, values in sections.items():
            raw[section].update(values)
        return self.write(f"configs/{case}.json", json.dumps(raw))

    def universe(self, case: str, rows: str) -> Path:
        return self.write(f"universes/{case}.csv", "symbol,category,yfinance\n" + rows)

    def run_copy(self, case: str, without: tuple[str, ...] = ()) -> Path:
        """A copy of the finished tiny run for one case (less some files), so no case can spoil another's."""
        copy = self.root / "run_copies" / case
        if not copy.exists():
            shutil.copytree(self.run, copy, ignore=shutil.ignore_patterns(*without) if without else None)
        return copy


@dataclass
class Case:
    id: str
    argv: Callable[[World], list]
    names: tuple[str, ...]                      # each must appear, all on one line of the output
    keep: Callable[[World], Path] | None = None  # a folder whose bytes must be unchanged
    absent: Callable[[World], Path] | None = None  # a path that must not come into existence
    env: dict | None = None


def train_with(case: str, top: dict | None = None, **sections) -> Callable[[World], list]:
    return lambda w: ["train", w.config(case, top, **sections)]


def fit(*extra) -> Callable[[World], list]:
    return lambda w: ["tokenizer", "fit", "--case", "sample", "--data-dir", w.data, "-o", w.path("tok.json"), *extra]


def files(folder: str, *extra, cache: str = "") -> Callable[[World], list]:
    """`data download` of the one-asset universe XYZ from a folder of CSVs prepared in the fixture."""
    return lambda w: ["data", "download", "--universe", w.path("universes/xyz.csv"), "--provider",
                      f"files:{w.path('sources/' + folder)}", "--data-dir", w.path(cache or f"caches/{folder}"), *extra]


def slurm(case: str, *extra) -> Callable[[World], list]:
    return lambda w: ["slurm", CONFIGS / "sample.json", "-o", w.path(f"slurm/{case}/job.sh"), *extra]


def nothing_in(name: str) -> Callable[[World], Path]:
    return lambda w: w.path(name)


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
def world(tmp_path_factory) -> World:
    w = World(tmp_path_factory.mktemp("bad_inputs"))
    w.write("outside/ETH-USD.csv", HEADER + candle_lines(pd.date_range("2020-01-01", periods=40).strftime("%Y-%m-%d")))
    (w.root / "files").mkdir()
    w.write("a_file", "not a folder\n")
    w.write("universes/xyz.csv", "symbol,category\nXYZ,us_stocks\n")
    w.write("universes/two_bad.csv", "symbol,category\nAAA,us_stocks\nBBB,us_stocks\nCCC,us_stocks\n")
    w.write("universes/ccxt.csv", "symbol,category,ccxt\nBTC,crypto,BTC USDT\n")
    days = pd.date_range("2020-01-01", periods=12)
    w.write("sources/ambiguous/XYZ.csv", HEADER + candle_lines(days.strftime("%d/%m/%Y")))
    w.write("sources/hourly/XYZ.csv", HEADER + candle_lines(pd.date_range("2020-01-01", periods=300, freq="h")
                                                            .strftime("%Y-%m-%d %H:%M:%S")))
    w.write("sources/words/XYZ.csv", HEADER + candle_lines(days.strftime("%b %d %Y")))
    w.write("sources/duplicate/XYZ.csv", HEADER + candle_lines(["2020-01-02", "2020-01-03", "2020-01-06",
                                                                "2020-01-03", "2020-01-07"]))
    w.write("sources/gzip/XYZ.csv", gzip.compress((HEADER + candle_lines(days.strftime("%Y-%m-%d"))).encode()))
    pd.DataFrame({"date": days, "open": 10.0, "high": 12.0, "low": 9.0, "close": 11.0}).to_parquet(
        w.path("sources/parquet/XYZ.csv").parent.mkdir(parents=True) or w.path("sources/parquet/XYZ.csv"))
    w.write("sources/binary/XYZ.csv", bytes(range(256)) * 4)
    good = HEADER + candle_lines(days.strftime("%Y-%m-%d"))
    w.write("sources/bad/AAA.csv", good + "2020-02-01,10,9,12,11,100\n")
    w.write("sources/bad/BBB.csv", good + "2020-02-01,10,abc,9,11,100\n")
    w.write("sources/bad/CCC.csv", good)
    w.run = finished_run(w)
    for name in ("good", "broken"):
        shutil.copytree(w.run, w.path(f"status_root/{name}"))
    w.write("status_root/broken/training_log.json", '{"epochs": [')
    result = run_cli("data", "download", "--case", "sample", "--data-dir", w.data)
    assert result.returncode == 0, result.stderr
    return w


def finished_run(w: World) -> Path:
    """The tiny run of every case that must not overwrite a trained run (2 epochs of 2 steps, no evaluation)."""
    cfg = w.config("finished", training={"evaluate": False, "checkpoint_dir": str(w.path("finished"))})
    result = run_cli("train", cfg, "--run-dir", w.path("finished/run"))
    assert result.returncode == 0, result.stderr
    return w.path("finished/run")


@pytest.fixture(scope="module")
def outcomes(world):
    """Run every case, two at a time: (result, snapshot before, snapshot after) per case id."""
    def one(case: Case):
        kept = case.keep(world) if case.keep else None
        before = snapshot(kept) if kept else None
        result = run_cli(*case.argv(world), cwd=world.root, timeout=300, env=case.env)
        return case.id, (result, before, snapshot(kept) if kept else None)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(case, outcomes, world):
    result, before, after = outcomes[case.id]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and "Could not infer format" not in output, output
    assert any(all(name in line for name in case.names) for line in output.splitlines()), output
    assert before == after, "the bytes of the kept folder changed"
    if case.absent:
        assert not case.absent(world).exists(), f"{case.absent(world)} was written"


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


# --- the same mistakes from Python ---------------------------------------------------------------------------------

def test_time_split_checks_its_ratios_and_its_frame():
    candles = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=10), "close": 1.0})
    for train, val in ((1.5, 0.1), (-0.1, 0.1), (0.7, -0.1), (0.6, 0.5)):
        with pytest.raises(MarketGPTError, match="ratio"):
            time_split(candles, train, val)
    with pytest.raises(MarketGPTError, match="'date' column"):
        time_split(candles.rename(columns={"date": "day"}))


def test_load_universe_of_a_number_or_nothing():
    with pytest.raises(MarketGPTError, match="expected a case name or a CSV path, got int 123"):
        load_universe(123)
    with pytest.raises(MarketGPTError, match="no universe given"):
        load_universe("")


def test_load_universe_of_a_folder_names_it(tmp_path):
    with pytest.raises(MarketGPTError, match=str(tmp_path)):
        load_universe(tmp_path)


# --- what must be kept, recorded and told ----------------------------------------------------------------------------

def random_walk(days: int, seed: int) -> str:
    """Valid daily candles of a random walk, as CSV text."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, days)))
    opened = np.r_[100, close[:-1]] * np.exp(rng.normal(0, 0.002, days))
    high, low = np.maximum(opened, close) * 1.01, np.minimum(opened, close) * 0.99
    dates = pd.bdate_range("2015-01-01", periods=days).strftime("%Y-%m-%d")
    return HEADER + "".join(f"{d},{o:.4f},{h:.4f},{lo:.4f},{c:.4f},1000\n"
                            for d, o, h, lo, c in zip(dates, opened, high, low, close))


def test_an_edited_source_file_is_read_again_and_refresh_reads_everything(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "XYZ.csv").write_text(HEADER + candle_lines(["2020-01-02", "2020-01-03"]))
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nXYZ,us_stocks\n")
    argv = ["data", "download", "--universe", universe, "--provider", f"files:{src}", "--data-dir", tmp_path / "c"]
    assert run_cli(*argv).returncode == 0
    assert "1 already up to date" in run_cli(*argv).stdout
    (src / "XYZ.csv").write_text(HEADER + "2020-01-02,20,24,18,22,100\n2020-01-03,10,12,9,11,100\n")
    result = run_cli(*argv)
    assert result.returncode == 0 and "XYZ: read again from scratch (XYZ.csv changed since it was cached" in result.stdout
    cached = next((tmp_path / "c").glob("files-*/XYZ.parquet"))
    assert pd.read_parquet(cached).close.tolist() == [22.0, 11.0]
    again = run_cli(*argv, "--refresh")
    assert again.returncode == 0 and "XYZ: read again from scratch (--refresh)" in again.stdout


def test_dropped_rows_and_assets_too_short_are_recorded_in_the_run_and_printed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, symbol in enumerate(("LONG", "OTHER")):
        (src / f"{symbol}.csv").write_text(random_walk(300, i))
    (src / "SHORT.csv").write_text(random_walk(20, 7))
    bad = random_walk(300, 9).splitlines(keepends=True)
    bad[10] = bad[10].split(",")[0] + ",10,9,12,11,100\n"     # high below low
    bad[20] = bad[20].split(",")[0] + ",10,abc,9,11,100\n"    # not a number
    (src / "BAD.csv").write_text("".join(bad))
    universe = tmp_path / "u.csv"
    universe.write_text("symbol,category\nLONG,us_stocks\nOTHER,us_stocks\nSHORT,us_stocks\nBAD,us_stocks\n")
    cfg = json.loads(small_config(tmp_path, max_steps_per_epoch=2, epochs=1, evaluate=False).read_text())
    cfg["data"].update(universe=str(universe), provider=f"files:{src}", on_bad_rows="drop")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    result = run_cli("train", tmp_path / "cfg.json")
    assert result.returncode == 0, result.stderr
    assert "Dropped bad rows (on_bad_rows=drop): BAD 2 (" in result.stdout
    assert "Skipped assets (no training windows): SHORT (19 token rows, fewer than context_length + 1 = 33)" \
        in result.stdout
    run = next((tmp_path / "checkpoints").glob("tiny_*"))
    info = json.loads((run / "data_info.json").read_text())
    assert info["skipped_assets"] == ["SHORT"]
    assert info["dropped_rows"] == {"BAD": {"not_a_number": 1, "high_below_low": 1}}


def start_training(cfg: Path) -> tuple[subprocess.Popen, str]:
    """`marketgpt train CFG` running in the background, once epoch 1 is in its training log (and last.pt saved)."""
    proc = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", "train", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = ""
    for line in proc.stdout:
        out += line
        if line.startswith("Time: "):
            break
    log = run_dir_of(out) / "training_log.json"
    for _ in range(300):
        if log.exists() and json.loads(log.read_text())["epochs"]:
            break
        time.sleep(0.1)
    return proc, out


def test_ctrl_c_saves_prints_the_resume_hint_and_status_says_stopped(tmp_path):
    proc, out = start_training(small_config(tmp_path, epochs=50, max_steps_per_epoch=30, evaluate=False))
    proc.send_signal(signal.SIGINT)
    out += proc.stdout.read()
    assert proc.wait() == 130, proc.stderr.read()
    run = run_dir_of(out)
    assert f"resume with --resume {run}" in out and (run / "last.pt").exists()
    status = run_cli("status", run).stdout
    assert f"stopped (resume: marketgpt train --resume {run})" in status and "ETA ?" in status, status


def test_a_killed_run_shows_crashed_not_training(tmp_path):
    proc, out = start_training(small_config(tmp_path, epochs=50, max_steps_per_epoch=30, evaluate=False))
    proc.kill()
    proc.wait()
    run = run_dir_of(out)
    status = run_cli("status", run).stdout
    assert f"crashed (resume: marketgpt train --resume {run})" in status and "ETA ?" in status, status


def test_a_run_that_fails_after_it_started_says_so(tmp_path):
    from marketgpt.run_files import end_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "x"}))
    (run / "last.pt").write_bytes(b"")
    end_run(run, RuntimeError("CUDA out of memory"), made_here=True)
    log = json.loads((run / "training_log.json").read_text())
    assert log["state"] == "failed" and log["error"] == "RuntimeError: CUDA out of memory"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    end_run(fresh, KeyboardInterrupt(), made_here=True)   # nothing to resume: no directory left behind
    assert not fresh.exists()


def test_data_info_on_an_empty_cache_says_where_it_looked(world):
    result = run_cli("data", "info", "--case", "sample", "--provider", "yfinance", "--data-dir", world.data)
    assert f"nothing cached under {world.data / 'yfinance'}" in result.stdout
    assert "candles of other providers are cached there: sample" in result.stdout


def test_the_tokenizer_refuses_descending_and_duplicate_dates():
    frame = pd.DataFrame({"date": pd.bdate_range("2020-01-01", periods=50), "open": 10.0, "high": 11.0,
                          "low": 9.0, "close": 10.0 + np.arange(50) % 3, "volume": 1.0})
    tokenizer = CandleTokenizer(16).fit(frame)
    with pytest.raises(MarketGPTError, match="earlier than row"):
        tokenizer.encode(frame.iloc[::-1])
    with pytest.raises(MarketGPTError, match="the same date as row"):
        CandleTokenizer(16).fit(pd.concat([frame.iloc[:5], frame.iloc[4:]]))


def test_every_numeric_config_key_has_a_range_and_a_readme_entry():
    from marketgpt.config import RANGES, SECTIONS

    numeric = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if f.type in ("int", "float")}
    assert numeric == set(RANGES)
    readme = (CONFIGS.parent / "README.md").read_text()
    reference = readme[readme.index("## Config reference"):]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{section}.{f.name}`" in reference, f"{section}.{f.name} is not in the README reference"


def test_a_job_script_written_elsewhere_runs_from_where_it_was_written(tmp_path):
    """SLURM opens the --output file before the script runs: the job's working directory is pinned (--chdir) to
    the folder that holds the log folder created with the script, so `sbatch jobs/x.sh` works from anywhere."""
    result = run_cli("slurm", CONFIGS / "sample.json", "-o", "jobs/x.sh", "--gpus-per-node", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "jobs" / "x.sh").read_text()
    assert f"#SBATCH --chdir={tmp_path}\n" in script and "#SBATCH --output=logs/sample_%j.out" in script
    assert (tmp_path / "logs").is_dir()
    assert subprocess.run(["bash", "-n", str(tmp_path / "jobs" / "x.sh")]).returncode == 0


def test_every_option_of_the_data_tokenizer_train_and_cluster_commands_has_help():
    import argparse

    from marketgpt.cli import build_parser

    def options(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, [*path, name])
            elif not isinstance(action, argparse._HelpAction):
                yield " ".join(path), action

    mine = ("data", "tokenizer", "train", "slurm", "launch", "status")
    missing = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in options(build_parser(), [])
               if cmd.split(" ")[0] in mine and not a.help]
    assert not missing


def test_a_run_that_ended_without_an_epoch_is_not_called_finished(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "zero", "training": {"epochs": 3}}))
    (run / "training_log.json").write_text(json.dumps({"epochs": [], "finished": True, "total_epochs": 3}))
    status = run_cli("status", run).stdout
    assert "ended before its first epoch" in status and "  finished" not in status, status
