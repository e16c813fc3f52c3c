"""Malformed and hostile input to the commands that forecast from, trade on, log and serve a trained run
(forecast, signals, backtest, walk-forward, finetune, ensemble, outcomes, monitor, serve, evaluate's options, slurm
--walkforward), judged as in test_bad_inputs_cli.py: a non-zero exit, no traceback, the file, option or asset on
one line, nothing written that should not be, and the run directories involved left byte for byte as they were.
"""

import json
import shutil
import socket

import pytest
from bad_world import CONFIGS, Case, check_case, nothing_in, run_cases, slurm

PATHS = 4   # sample paths of the few cases that get as far as sampling


def forecast(run: str, *extra):
    return lambda w: ["forecast", w.path(run) if run != "run" else w.run, *extra]


def signals(*extra):
    return lambda w: ["signals", w.run, *extra]


def evaluate(*extra, run: str = "run"):
    return lambda w: ["evaluate", w.path(run) if run != "run" else w.run, *extra]


def wf(*extra):
    return lambda w: ["walkforward", CONFIGS / "sample.json", *extra]


def kept(run: str):
    return lambda w: w.path(run) if run != "run" else w.run


CASES = [
    # a run that is missing, incomplete, corrupt, or whose files disagree
    Case("forecast-missing-run", forecast("nope"), ("nope", "run directory not found")),
    Case("forecast-run-is-a-file", forecast("a_file"), ("a_file", "a file, not a run directory")),
    Case("forecast-run-without-tokenizer", forecast("runs/no_tok"), ("no_tok", "no tokenizer.json"),
         keep=kept("runs/no_tok")),
    Case("forecast-corrupt-config", forecast("runs/bad_json"), ("bad_json/config.json", "invalid JSON"),
         keep=kept("runs/bad_json")),
    Case("forecast-config-wrong-type", forecast("runs/bad_type"), ("bad_type/config.json", "model.d_model",
                                                                   "expected int")),
    Case("forecast-corrupt-calibration", forecast("runs/bad_cal"), ("bad_cal/calibration.json", "invalid JSON")),
    Case("forecast-token-store-of-another-run", forecast("runs/other_store"),
         ("other_store/best_model.pt", "tokens/assets.json", "5 assets", "token store",
          "asset_emb.weight 7x16 vs 5x16"), keep=kept("runs/other_store")),
    Case("evaluate-token-store-of-another-run", evaluate(run="runs/other_store"),
         ("other_store/best_model.pt", "tokens/assets.json", "asset_emb.weight"), keep=kept("runs/other_store")),
    Case("forecast-model-section-changed", forecast("runs/wider"),
         ("wider/best_model.pt", "model section", "wider/config.json", "tok_emb.weight", "blocks.1.")),
    # forecast options
    Case("forecast-horizon-0", forecast("run", "--horizon", "0"), ("horizon", "1..252", "got 0")),
    Case("forecast-samples-negative", forecast("run", "--samples", "-3"), ("samples", "got -3")),
    Case("forecast-seed-negative", forecast("run", "--seed", "-1"), ("seed", "got -1")),
    Case("forecast-temperature-nan", forecast("run", "--temperature", "nan"), ("temperature", "nan")),
    Case("forecast-top-p-above-1", forecast("run", "--top-p", "1.5"), ("top-p", "1.5")),
    Case("forecast-as-of-words", forecast("run", "--as-of", "yesterday"), ("as-of", "yesterday", "YYYY-MM-DD")),
    Case("forecast-as-of-in-the-future", forecast("run", "--as-of", "2099-01-01", "--samples", f"{PATHS}", "-o",
                                                  "future.parquet"), ("SPX", "as-of 2099-01-01", "after its last"),
         absent=nothing_in("future.parquet")),
    Case("forecast-symbol-traversal", forecast("run", "--symbols", "../../etc/passwd"), ("../../etc/passwd", "not in")),
    Case("forecast-output-read-only", forecast("run", "-o", "/proc/forecast.parquet"), ("/proc", "-o", "cannot write")),
    Case("forecast-charts-under-a-file", forecast("run", "--charts", "a_file/charts", "-o", "fc.parquet"),
         ("a_file/charts", "--charts", "is a file"), absent=nothing_in("fc.parquet")),
    Case("forecast-data-dir-is-a-file", forecast("run", "--data-dir", "a_file"), ("a_file", "--data-dir", "is a file")),
    Case("forecast-device-tpu", forecast("run", "--device", "tpu"), ("device 'tpu'",)),
    Case("forecast-empty-universe", forecast("run", "--universe", "universes/empty.csv"), ("empty.csv", "no assets")),
    Case("forecast-hostile-symbol", forecast("run", "--universe", "universes/hostile.csv"),
         ("hostile.csv", "line 2", "$(touch pwned)")),
    Case("forecast-unknown-provider", forecast("run", "--provider", "bogus"), ("unknown provider 'bogus'",)),
    # signals
    Case("signals-threshold-nan", signals("--threshold", "nan"), ("--threshold", "nan")),
    Case("signals-horizon-3y", signals("--horizons", "3y"), ("horizon 3y unknown",)),
    Case("signals-db-mysql", signals("--log", "--db", "mysql://u:p@localhost/x"), ("mysql", "unknown database dialect", "SQLite")),
    Case("signals-output-read-only", signals("-o", "/proc/signals.csv"), ("/proc", "-o", "cannot write")),
    Case("signals-charts-under-a-file", signals("--charts", "a_file/c", "-o", "sig.csv"), ("a_file/c", "--charts"),
         absent=nothing_in("sig.csv")),
    # backtest
    Case("backtest-missing-source", lambda w: ["backtest", w.path("nope")], ("nope", "no such run directory")),
    Case("backtest-corrupt-oos-table", lambda w: ["backtest", w.path("oos_folder")],
         ("oos_folder/oos.parquet", "unreadable forecast table")),
    Case("backtest-weighting-unknown", lambda w: ["backtest", w.run, "--weighting", "foo"], ("--weighting", "foo")),
    Case("backtest-start-after-end", lambda w: ["backtest", w.run, "--start", "2020-01-01", "--end", "2019-01-01"],
         ("--end 2019-01-01", "--start 2020-01-01")),
    Case("backtest-start-not-a-date", lambda w: ["backtest", w.run, "--start", "2019-02-30"], ("--start", "2019-02-30")),
    # walk-forward
    Case("walkforward-folds-0", wf("--folds", "0"), ("--folds", "got 0")),
    Case("walkforward-horizons-not-numbers", wf("--horizons", "5,abc"), ("--horizons", "5,abc")),
    Case("walkforward-output-under-a-file", wf("-o", "a_file/wf"), ("a_file/wf", "is a file")),
    Case("walkforward-stitch-without-plan", lambda w: ["walkforward", "--stitch", "-o", w.path("no_wf")],
         ("no_wf/walkforward.json", "not found")),
    # finetune and ensemble
    Case("finetune-unknown-category", lambda w: ["finetune", w.run, "--category", "martian"], ("--category martian",)),
    Case("finetune-parent-without-tokenizer", lambda w: ["finetune", w.path("runs/no_tok"), "--category", "us_stocks"],
         ("no_tok", "no tokenizer.json"), keep=kept("runs/no_tok")),
    Case("finetune-changes-the-model", lambda w: ["finetune", w.run, "--category", "us_stocks", "--set",
                                                  "model.d_model=64"], ("--set model.d_model=64",)),
    Case("ensemble-one-run", lambda w: ["ensemble", "-o", w.path("ens1"), w.run, w.run], ("at least 2",),
         absent=nothing_in("ens1")),
    Case("ensemble-missing-member", lambda w: ["ensemble", "-o", w.path("ens2"), w.run, w.path("nope")],
         ("nope", "run directory not found"), absent=nothing_in("ens2")),
    Case("ensemble-out-under-a-file", lambda w: ["ensemble", "-o", w.path("a_file/e"), w.run,
                                                 w.path("runs/twin")], ("a_file/e", "is a file")),
    # the signal log: outcomes, monitor
    Case("outcomes-db-mysql", lambda w: ["outcomes", "--db", "mysql://u:p@localhost/x"],
         ("mysql", "unknown database dialect", "SQLite")),
    Case("outcomes-db-in-memory", lambda w: ["outcomes", "--db", "sqlite://"], ("sqlite://", "in-memory")),
    Case("outcomes-no-log-in-data-dir", lambda w: ["outcomes", "--data-dir", w.path("no_log")],
         ("no_log/marketgpt.db", "no signal log"), absent=nothing_in("no_log")),
    Case("outcomes-unknown-provider", lambda w: ["outcomes", "--provider", "bogus", "--data-dir", w.path("no_log")],
         ("unknown provider 'bogus'",), absent=nothing_in("no_log")),
    Case("monitor-db-in-memory", lambda w: ["monitor", "--db", "sqlite:///"], ("sqlite:///", "in-memory")),
    Case("monitor-no-log-in-data-dir", lambda w: ["monitor", "--data-dir", w.path("no_log")],
         ("no_log/marketgpt.db", "no signal log"), absent=nothing_in("no_log")),
    Case("monitor-horizon-3y", lambda w: ["monitor", "--horizon", "3y", "--data-dir", w.path("no_log")],
         ("horizon 3y unknown",), absent=nothing_in("no_log")),
    # serve: refused before it listens
    Case("serve-run-without-tokenizer", lambda w: ["serve", "--run", w.path("runs/no_tok"), "--data-dir", w.data],
         ("--run", "no_tok", "no tokenizer.json")),
    Case("serve-backtest-missing", lambda w: ["serve", "--run", w.run, "--backtest", w.path("nope"), "--data-dir",
                                              w.data], ("--backtest", "nope", "equity.png")),
    Case("serve-host-unresolvable", lambda w: ["serve", "--host", "no such host!", "--data-dir", w.data],
         ("--host no such host!", "not an address")),
    Case("serve-port-in-use", lambda w: ["serve", "--port", str(w.busy_port), "--data-dir", w.data],
         ("--port", "cannot listen")),
    Case("serve-port-70000", lambda w: ["serve", "--port", "70000"], ("--port", "70000")),
    # evaluate's options
    Case("evaluate-horizon-negative", evaluate("--horizons", "1,-5"), ("--horizons", "1,-5")),
    Case("evaluate-every-0", evaluate("--horizons", "5", "--every", "0"), ("--every", "got 0")),
    Case("evaluate-split-train", evaluate("--split", "train"), ("--split", "train")),
    Case("evaluate-empty-universe", evaluate("--universe", "universes/empty.csv"), ("empty.csv", "no assets")),
    Case("evaluate-start-after-end", evaluate("--universe", "sample", "--start", "2020-01-01", "--end", "2019-01-01"),
         ("--end 2019-01-01", "2020-01-01")),
    Case("evaluate-start-in-the-future", lambda w: ["evaluate", w.run, "--universe", "sample", "--start", "2099-01-01",
                                                    "--data-dir", w.data], ("2099-01-01", "nothing to score"),
         keep=kept("run")),
    Case("evaluate-start-without-universe", evaluate("--start", "2015-01-01"), ("--start", "--universe")),
    Case("compare-corrupt-results", lambda w: ["compare", w.path("runs/bad_results"), w.run],
         ("bad_results/test_results.json", "invalid JSON")),
    # slurm --walkforward: every path written into the scripts is checked like the options
    Case("slurm-wf-dir-newline", slurm("wf-dir", "--walkforward", "--wf-dir", "wf\ntouch pwned"), ("--wf-dir",),
         absent=nothing_in("slurm/wf-dir")),
    Case("slurm-config-path-newline", lambda w: ["slurm", w.path("configs/new\nline.json"), "-o",
                                                 w.path("slurm/cfg-newline/job.sh")], ("CONFIG", "not allowed"),
         absent=nothing_in("slurm/cfg-newline")),
    Case("slurm-output-newline", lambda w: ["slurm", CONFIGS / "sample.json", "-o", w.path("slurm/out\nid.sh")],
         ("-o", "not allowed")),
    Case("slurm-wf-max-parallel-0", slurm("parallel", "--walkforward", "--max-parallel", "0"), ("--max-parallel",)),
    Case("slurm-folds-without-walkforward", slurm("folds", "--folds", "3"), ("--folds", "--walkforward")),
]


def copy_run(w, name: str, edit=None) -> None:
    """A copy of the finished run under runs/NAME, changed by edit(copy)."""
    copy = w.path(f"runs/{name}")
    if not copy.exists():
        shutil.copytree(w.run, copy)
        if edit is not None:
            edit(copy)


def edit_json(name: str, change):
    def edit(copy):
        raw = json.loads((copy / name).read_text())
        change(raw)
        (copy / name).write_text(json.dumps(raw))
    return edit


@pytest.fixture(scope="module")
def outcomes(world):
    copy_run(world, "twin")
    copy_run(world, "no_tok", lambda c: (c / "tokenizer.json").unlink())
    copy_run(world, "bad_json", lambda c: (c / "config.json").write_text('{"model": {'))
    copy_run(world, "bad_type", edit_json("config.json", lambda r: r["model"].update(d_model="big")))
    copy_run(world, "bad_cal", lambda c: (c / "calibration.json").write_text('{"close_temperature": '))
    copy_run(world, "bad_results", lambda c: (c / "test_results.json").write_text('{"test_loss": 1'))
    copy_run(world, "other_store", edit_json("tokens/assets.json", lambda r: r.update(
        {k: r[k][:5] for k in ("symbols", "categories")})))
    copy_run(world, "wider", edit_json("config.json", lambda r: r["model"].update(d_model=64)))
    world.write("universes/empty.csv", "symbol,category\n")
    world.write("universes/hostile.csv", "symbol,category\n$(touch pwned),us_stocks\n")
    world.write("configs/new\nline.json", (CONFIGS / "sample.json").read_text())
    world.write("oos_folder/config.json", (world.run / "config.json").read_text())
    world.write("oos_folder/oos.parquet", b"not a parquet file")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        world.busy_port = busy.getsockname()[1]
        return run_cases(CASES, world)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(case, outcomes, world):
    check_case(case, outcomes[case.id], world)


def test_there_are_at_least_60_new_cases():
    assert len(CASES) >= 60
