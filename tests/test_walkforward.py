"""Walk-forward: fold geometry and embargo, a real walk-forward on the sample universe (resumed after a kill -9),
its stitched out-of-sample table as a backtest source, no look-ahead per fold, and the bad-input errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_cli, small_config

from marketgpt.data.split import EMBARGO, TimeSplit
from marketgpt.errors import MarketGPTError
from marketgpt.walkforward import plan_folds, walkforward


def _calendar(n=400):
    return pd.bdate_range("2015-01-01", periods=n)


def test_folds_tile_the_end_of_the_calendar_with_the_embargo_before_validation():
    dates = _calendar()
    folds = plan_folds(dates, 4, 20, 15, 5)
    assert [f.test_end for f in folds][-1] == f"{dates[-1]:%Y-%m-%d}"
    for a, b in zip(folds, folds[1:]):     # back to back: the next test window starts on the next date
        assert dates.get_loc(pd.Timestamp(b.test_start)) == dates.get_loc(pd.Timestamp(a.test_end)) + 1
    for f in folds:
        test = dates[(dates >= f.test_start) & (dates <= f.test_end)]
        val = dates[(dates > pd.Timestamp(f.train_end) + pd.Timedelta(days=5)) & (dates <= f.val_end)]
        train = dates[dates <= f.train_end]
        assert len(test) == 20 and len(val) == 15
        assert pd.Timestamp(f.val_end) < pd.Timestamp(f.test_start)
        # no training target lies within the embargo's 5 days before validation (nor, so, before the test start)
        assert (val[0] - train[-1]).days > 5
        assert (pd.Timestamp(f.test_start) - train[-1]).days > 5
    sliding = plan_folds(dates, 4, 20, 15, 5, mode="sliding")
    lengths = [len(dates[(dates >= (f.train_start or dates[0])) & (dates <= f.train_end)]) for f in sliding]
    assert max(lengths) - min(lengths) <= 1 and lengths[0] == len(dates[dates <= sliding[0].train_end])


def test_folds_that_do_not_fit_say_how_many_would():
    with pytest.raises(MarketGPTError, match="at most 8 would"):
        plan_folds(_calendar(200), 9, 20, 20, 0, min_train=20)
    with pytest.raises(MarketGPTError, match="--embargo must be an integer >= 0"):
        plan_folds(_calendar(), 2, 20, 20, -1)


def test_embargo_targets_belong_to_no_split():
    dates = pd.bdate_range("2020-01-01", periods=30)
    split = TimeSplit(dates[9], dates[19], {}, embargo_days=4)
    labels = split.assign(dates)
    gap = (dates > dates[9]) & (dates <= dates[9] + pd.Timedelta(days=4))
    assert (labels[gap] == EMBARGO).all() and gap.sum() >= 2
    assert (labels[:10] == 0).all() and (labels[20:] == 2).all()
    assert set(labels[10:20][~gap[10:20]]) == {1}
    assert split.period("val")[0] == dates[9] + pd.Timedelta(days=4)


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    """A 4-fold walk-forward of a tiny sample config, killed with SIGKILL during fold 1 and run again."""
    tmp = tmp_path_factory.mktemp("wf")
    config = small_config(tmp, "wf", epochs=3, max_steps_per_epoch=5)
    assert run_cli("data", "download", "--case", "sample", "--data-dir", tmp / "data").returncode == 0
    out = tmp / "out"
    args = ["walkforward", config, "--folds", "4", "--test-days", "40", "--embargo", "5", "--horizons", "5",
            "--samples", "8", "-o", out]
    proc = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (out / "fold_01" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "fold_00" / "fold.json").exists() and not (out / "oos.parquet").exists()
    first_weights = (out / "fold_00" / "best_model.pt").stat().st_mtime_ns
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return out, config, result.stdout, first_weights


def test_walkforward_resumes_after_a_kill_and_stitches_every_fold(wf):
    out, _, stdout, first_weights = wf
    assert "fold_00: done already" in stdout
    assert (out / "fold_00" / "best_model.pt").stat().st_mtime_ns == first_weights   # fold 0 was not redone
    plan = json.loads((out / "walkforward.json").read_text())
    assert plan["status"] == {f"fold_{i:02d}": "done" for i in range(4)}
    rows = plan["summary"]["folds"]
    assert [r["fold"] for r in rows] == ["fold_00", "fold_01", "fold_02", "fold_03", "all folds"]
    assert rows[-1]["n"] == sum(r["n"] for r in rows[:-1]) > 0
    assert all(np.isfinite(r["skill_vs_garch_t"]) for r in rows)
    assert "| all folds |" in (out / "summary.md").read_text()
    assert (out / "skill_by_fold.png").stat().st_size > 1000


def test_oos_table_is_out_of_sample_per_fold(wf):
    out, *_ = wf
    plan = json.loads((out / "walkforward.json").read_text())
    oos = pd.read_parquet(out / "oos.parquet")
    assert set(oos.horizon) == {1, 5} and set(oos.source) == {"density", "paths"}
    one = oos[oos.horizon == 1]
    assert ((one.return_q05 <= one.return_q50) & (one.return_q50 <= one.return_q95)).all()
    assert one.prob_up.between(0, 1).all() and (one["mean"] > 0).all()
    for fold in plan["folds"]:
        mine = oos[oos.fold == fold["index"]]
        assert mine.as_of.min() >= pd.Timestamp(fold["val_end"])      # forecasts only from the last val day on
        assert mine.as_of.max() <= pd.Timestamp(fold["test_end"])
        cfg = json.loads((out / fold["name"] / "config.json").read_text())
        assert cfg["data"]["end"] == fold["test_end"] and cfg["data"]["embargo_days"] == 5
        results = json.loads((out / fold["name"] / "test_results.json").read_text())
        assert set(results["horizons"]) == {"1", "5"}                # each fold's multi-horizon evaluation
        assert results["horizons_info"]["samples"] == 8
    assert not oos.duplicated(["symbol", "as_of", "horizon"]).any()


def test_a_walkforward_directory_is_a_backtest_source(wf, tmp_path):
    out, config, *_ = wf
    data = json.loads(config.read_text())["data"]["data_dir"]
    result = run_cli("backtest", out, "--horizon", "1w", "--benchmarks", "SPX", "--benchmark-universe", "sample",
                     "--provider", "sample", "--data-dir", data, "-o", tmp_path / "bt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "bt" / "report.md").exists()


def _copy_series(shared_data, folder, change=None):
    """Three real series as files, optionally with one close multiplied from a date on (or on one date)."""
    for category, symbol in (("indices", "SPY"), ("indices", "QQQ"), ("indices", "DIA")):
        frame = pd.read_csv(shared_data / category / f"{symbol}.csv.gz")
        if change and symbol == "SPY":
            when, only = change
            dates = pd.to_datetime(frame.iloc[:, 0])
            hit = (dates == when) if only else (dates >= when)
            for col in ("open", "high", "low", "close"):
                frame.loc[hit, col] = frame.loc[hit, col] * 1.07
        (folder / category).mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / category / f"{symbol}.csv", index=False)


def _one_fold(tmp_path, shared_data, name, change=None):
    src = tmp_path / f"src_{name}"
    _copy_series(shared_data, src, change)
    universe = tmp_path / "three.csv"
    universe.write_text("symbol,category\nSPY,indices\nQQQ,indices\nDIA,indices\n")
    (tmp_path / name).mkdir()
    config = small_config(tmp_path / name, "la", epochs=2, max_steps_per_epoch=4)
    raw = json.loads(config.read_text())
    raw["data"].update(universe=str(universe), provider=f"files:{src}", start="2014-01-01")
    config.write_text(json.dumps(raw))
    out = tmp_path / name / "wf"
    walkforward(config, out, folds=3, test_days=30, embargo=5, horizons=(3,), samples=8, only_fold=1,
                log=lambda *a: None)
    return out


def test_a_fold_sees_nothing_from_its_test_window_on(tmp_path, shared_data):
    base = _one_fold(tmp_path, shared_data, "base")
    fold = json.loads((base / "walkforward.json").read_text())["folds"][1]
    later = pd.Timestamp(fold["test_start"]) + pd.Timedelta(days=10)
    after = _one_fold(tmp_path, shared_data, "after", (fold["test_start"], False))
    inside = _one_fold(tmp_path, shared_data, "inside", (later, False))

    def weights(out):
        return torch.load(out / "fold_01" / "best_model.pt", weights_only=True)["model"]

    w0, w1 = weights(base), weights(after)
    assert (base / "fold_01" / "tokenizer.json").read_bytes() == (after / "fold_01" / "tokenizer.json").read_bytes()
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    t0, t2 = (pd.read_parquet(o / "fold_01" / "oos.parquet") for o in (base, inside))
    key = ["symbol", "as_of", "horizon"]
    t0, t2 = t0.sort_values(key).reset_index(drop=True), t2.sort_values(key).reset_index(drop=True)
    before = (t0.as_of < later).to_numpy()
    cols = ["prob_up", "return_q05", "return_q95", "mean_return"]
    pd.testing.assert_frame_equal(t0.loc[before, key + cols], t2.loc[before, key + cols])
    spy = (t0.symbol == "SPY").to_numpy() & ~before
    assert not np.allclose(t0.loc[spy, "close_q50"], t2.loc[spy, "close_q50"])    # the change is seen from then on
    early = _one_fold(tmp_path, shared_data, "early", (pd.Timestamp(fold["train_end"]) - pd.Timedelta(days=200), True))
    w3 = weights(early)
    changed = (base / "fold_01" / "tokenizer.json").read_bytes() != (early / "fold_01" / "tokenizer.json").read_bytes()
    assert changed or not all(torch.equal(w0[k], w3[k]) for k in w0)


@pytest.mark.parametrize("extra, message", [
    (["--embargo", "-1"], "--embargo"),
    (["--folds", "50", "--test-days", "200"], "would"),
    (["--mode", "rolling"], "--mode"),
])
def test_bad_walkforward_options_get_one_line(tmp_path, extra, message):
    config = small_config(tmp_path)
    assert run_cli("data", "download", "--case", "sample", "--data-dir", tmp_path / "data").returncode == 0
    result = run_cli("walkforward", config, "-o", tmp_path / "wf", *extra)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_stitch_before_any_fold_finished_is_refused(tmp_path):
    config = small_config(tmp_path)
    assert run_cli("data", "download", "--case", "sample", "--data-dir", tmp_path / "data").returncode == 0
    from marketgpt.walkforward import make_plan

    out = make_plan(config, tmp_path / "wf", 2, 30, log=lambda *a: None)
    result = run_cli("walkforward", "--stitch", "-o", out)
    assert result.returncode == 2 and "no fold has finished" in result.stderr
