"""Ensembles: the linear pool's probabilities and its log score against the members', an ensemble directory in
evaluate and forecast, the as-of rule for its forecasts, and one-line refusals of runs that do not fit together."""

import json

import numpy as np
import pytest
import torch
from helpers import run_cli, run_dir_of, small_config

from marketgpt.data import load_candles, load_universe
from marketgpt.dataset import gather, make_windows
from marketgpt.ensemble import create_ensemble
from marketgpt.errors import MarketGPTError
from marketgpt.evaluate import evaluate_run
from marketgpt.forecast import Forecaster
from marketgpt.run import load_run


def train(tmp, name, **kwargs):
    result = run_cli("train", small_config(tmp, name, epochs=2, max_steps_per_epoch=8, asset_dropout=0.3,
                                           evaluate=False, **kwargs))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    return [train(tmp, f"seed{s}", seed=s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def ens_dir(runs, tmp_path_factory):
    return create_ensemble(runs, tmp_path_factory.mktemp("ens") / "ens", log=lambda *_: None)


def test_pooled_probabilities_are_the_mean_of_the_members(ens_dir):
    cfg, _, store, ensemble, _ = load_run(ens_dir, "cpu")
    T = cfg.model.context_length
    x, y, _, asset = gather(store, make_windows(store, "test", T)[:6], T)
    args = (torch.from_numpy(x), torch.from_numpy(asset), torch.as_tensor(store.category_ids)[asset])
    with torch.inference_mode():
        pooled, _ = ensemble(*args, torch.from_numpy(y))
        members = [torch.softmax(m(*args)[0].float(), -1) for m in ensemble.members]
    close = torch.stack(members).mean(0)[:, :, 0]
    torch.testing.assert_close(pooled[:, :, 0].exp(), close, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pooled.exp().sum(-1), torch.ones(pooled.shape[:-1]), rtol=1e-5, atol=1e-5)


def test_evaluation_puts_the_ensemble_next_to_its_members_and_the_pool_wins_on_log_score(ens_dir, runs):
    results = evaluate_run(ens_dir, plots=False, log=lambda *_: None, device="cpu")
    rows = results["ensemble"]["rows"]
    assert set(rows) == {"ensemble", "members' mean", *(r.name for r in runs)}
    assert results["ensemble"]["n"] > 100
    member_nll = [rows[r.name]["nll"] for r in runs]
    assert rows["ensemble"]["nll"] <= np.mean(member_nll) + 1e-12           # concavity of log, on real scores
    assert len(set(member_nll)) == 3                                        # the seeds gave different models
    alone = json.loads(json.dumps(evaluate_run(runs[0], plots=False, log=lambda *_: None, device="cpu")))
    assert rows[runs[0].name]["nll"] == pytest.approx(alone["returns"]["overall"]["model"]["nll"], rel=1e-9)
    assert "Ensemble and members" in (ens_dir / "report.md").read_text()


def test_cli_evaluate_with_horizons_and_forecast_on_an_ensemble(ens_dir, tmp_path):
    result = run_cli("evaluate", ens_dir, "--horizons", "5", "--every", "150", "--samples", "8")
    assert result.returncode == 0, result.stderr
    assert "members' mean" in result.stdout
    assert json.loads((ens_dir / "test_results.json").read_text())["horizons"]
    result = run_cli("forecast", ens_dir, "--horizon", "5", "--samples", "9", "-o", tmp_path / "fc.csv")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fc.csv").read_text().count("\n") > 5


def test_ensemble_forecasts_follow_the_as_of_rule(ens_dir):
    forecaster = Forecaster.from_pretrained(ens_dir, device="cpu")
    cfg = json.loads((ens_dir / "config.json").read_text())
    goog = load_candles(load_universe("sample"), "sample", cfg["data"]["data_dir"])
    goog = goog[goog.symbol == "GOOG"].reset_index(drop=True)
    as_of = goog.date.iloc[len(goog) // 2]
    base = forecaster.predict(goog, horizon=5, num_samples=30, seed=1, as_of=as_of)["GOOG"]
    later = goog.copy()
    later.loc[later.date > as_of, ["open", "high", "low", "close"]] *= 1.7
    np.testing.assert_array_equal(base.paths, forecaster.predict(later, horizon=5, num_samples=30, seed=1,
                                                                 as_of=as_of)["GOOG"].paths)
    earlier = goog.copy()
    earlier.loc[int(np.flatnonzero(earlier.date == as_of)[0]) - 1, ["open", "high", "low", "close"]] *= 1.3
    assert not np.array_equal(base.paths, forecaster.predict(earlier, horizon=5, num_samples=30, seed=1,
                                                             as_of=as_of)["GOOG"].paths)


def test_runs_that_do_not_fit_together_are_refused(runs, tmp_path):
    other = train(tmp_path, "coarse", seed=1)
    edges = json.loads((other / "tokenizer.json").read_text())
    (other / "tokenizer.json").write_text(json.dumps(edges, indent=3))      # same bins, other bytes
    result = run_cli("ensemble", runs[0], other, "-o", tmp_path / "bad")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and f"{other}" in result.stderr and "tokenizer" in result.stderr
    result = run_cli("ensemble", runs[0], tmp_path / "missing", "-o", tmp_path / "bad")
    assert result.returncode == 2 and "missing: run directory not found" in result.stderr
    result = run_cli("ensemble", runs[0], runs[0], "-o", tmp_path / "bad")
    assert result.returncode == 2 and "at least 2 different run directories" in result.stderr
    with pytest.raises(MarketGPTError, match="at least 2"):
        create_ensemble([runs[0]], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
