"""`marketgpt evaluate --horizons` and `--universe` on the demo run: the horizons block with all three baselines,
the one-step evaluation unchanged beside it, the report and plot, and zero-shot scoring of data the run never saw."""

import json
import shutil

import pytest
from helpers import is_png, run_cli

BASELINES = ("random_walk", "garch_t", "bootstrap")


@pytest.fixture(scope="module")
def horizon_run(demo_run, tmp_path_factory):
    """A copy of the demo run, evaluated with --horizons (the copy keeps the demo run's own results as they are)."""
    run_dir, _ = demo_run
    copy = tmp_path_factory.mktemp("horizons") / run_dir.name
    shutil.copytree(run_dir, copy)
    result = run_cli("evaluate", copy, "--horizons", "1,5,21", "--every", "63", "--samples", "48")
    assert result.returncode == 0, result.stderr
    return run_dir, copy


def test_the_horizons_block_scores_the_model_against_three_baselines(horizon_run):
    run_dir, copy = horizon_run
    results = json.loads((copy / "test_results.json").read_text())
    before = json.loads((run_dir / "test_results.json").read_text())
    assert results["test_loss"] == before["test_loss"]                    # the one-step evaluation as it was
    assert results["returns"]["overall"]["model"] == before["returns"]["overall"]["model"]
    block = results["horizons"]
    assert sorted(block, key=int) == ["1", "5", "21"]
    for h, hb in block.items():
        overall = hb["overall"]
        assert overall["n"] > 0 and set(hb["per_category"]) <= {"indices", "us_stocks"}
        for who in ("model", *BASELINES):
            assert overall[who]["crps"] > 0 and 0 <= overall[who]["coverage_80"] <= 1, (h, who)
        for b in BASELINES:
            assert f"crps_vs_{b}" in overall["skill"] and "p_value" in overall["dm"][f"vs_{b}"]
    # a wider horizon is harder for every forecaster: CRPS of the h-day return grows with h
    assert block["21"]["overall"]["model"]["crps"] > block["1"]["overall"]["model"]["crps"]
    info = results["horizons_info"]
    assert info["every"] == 63 and info["samples"] == 48 and info["origins"] > 0 and info["new_assets"] == []
    report = (copy / "report.md").read_text()
    assert "## Multi-horizon forecasts" in report and "### h = 21 days" in report
    assert is_png(copy / "horizon_skill.png") and results["plots"]["horizon_skill"] == "horizon_skill.png"


def test_evaluate_on_other_data_scores_new_assets_zero_shot(demo_run, shared_data, tmp_path):
    run_dir, _ = demo_run
    universe = tmp_path / "other.csv"
    universe.write_text("symbol,category\nSPY,indices\nBTC-USD,crypto\nEURUSD,fx\n")
    out = tmp_path / "other_eval"
    result = run_cli("evaluate", run_dir, "--universe", universe, "--provider", f"files:{shared_data}",
                     "--data-dir", tmp_path / "cache", "--start", "2016-06-30", "--horizons", "1,5",
                     "--every", "60", "--samples", "32", "--out", out)
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "test_results.json").read_text())
    assert results["data"]["new_assets"] == ["SPY", "BTC-USD", "EURUSD"] and results["data"]["start"] == "2016-06-30"
    per_asset = results["returns"]["per_asset"]
    assert set(per_asset) == {"SPY", "BTC-USD", "EURUSD"}
    assert all(b["n"] > 100 for b in per_asset.values())                  # every day after the start, once
    assert results["horizons_info"]["new_assets"] == ["BTC-USD", "EURUSD", "SPY"]
    assert set(results["horizons"]["5"]["per_category"]) == {"indices", "crypto", "fx"}
    assert not (run_dir / "eval_other").exists() and (out / "report.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--horizons", "0,5"], "each horizon must be an integer"),
    (["--horizons", "a,b"], "expected comma-separated days"),
    (["--horizons", "1", "--every", "0"], "--every must be a positive"),
    (["--start", "2020-01-01"], "go with --universe"),
    (["--universe", "sample", "--start", "31/12/2010"], "is not a date"),
])
def test_bad_evaluation_options_are_one_line_errors(demo_run, args, message):
    result = run_cli("evaluate", demo_run[0], *args)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1 and message in err[0], result.stderr
