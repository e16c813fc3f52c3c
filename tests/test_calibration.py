"""Calibration of the close head: a temperature fitted on val only, carried by the loaded model into evaluation and
sampling, a density that still integrates to 1, T = 1 and runs without calibration.json unchanged, explicit
temperatures that replace it, ensembles of calibrated members, and one-line errors for a bad file."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli, run_dir_of, small_config

from marketgpt.calibration import CALIBRATION_FILE, calibrate_run, close_logits, fit_temperature
from marketgpt.data import load_candles, load_universe
from marketgpt.dataset import TokenStore, make_windows
from marketgpt.density import close_density
from marketgpt.ensemble_model import Ensemble
from marketgpt.errors import MarketGPTError
from marketgpt.evaluate import evaluate_run, score_model
from marketgpt.evaluate.scoring import model_batches
from marketgpt.forecast import Forecaster
from marketgpt.run import load_run

QUIET = dict(log=lambda *a, **k: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibration")
    result = run_cli("train", small_config(tmp, "cal", epochs=2, max_steps_per_epoch=20, evaluate=False))
    assert result.returncode == 0, result.stderr
    assert "Calibrated the close head on val: T = " in result.stdout
    return run_dir_of(result.stdout)


def copy_run(run, tmp_path, name="copy"):
    out = tmp_path / name
    shutil.copytree(run, out)
    return out


def temperature(run_dir) -> float:
    return json.loads((run_dir / CALIBRATION_FILE).read_text())["close_temperature"]


def scores(run_dir, split="test"):
    cfg, tok, store, model, _ = load_run(run_dir, "cpu")
    T = cfg.model.context_length
    return score_model(model, store, make_windows(store, split, T), T, close_density(tok), np.asarray(store.returns),
                       64, levels=(0.1, 0.5, 0.9))


def perturb_close_tokens(run_dir, split: int, seed=0):
    """Shuffle the close tokens of every row of one split (0 train, 1 val, 2 test) in the run's token store."""
    store = TokenStore.load(run_dir / "tokens", mmap=False)
    rows = np.flatnonzero(store.split == split)
    store.tokens[rows, 0] = np.random.default_rng(seed).permutation(store.tokens[rows, 0])
    store.save(run_dir / "tokens")


def test_training_fits_the_temperature_on_val_and_the_loaded_model_carries_it(run):
    fit = json.loads((run / CALIBRATION_FILE).read_text())
    assert fit["split"] == "val" and 0.2 <= fit["close_temperature"] <= 5 and fit["n"] > 1000
    assert fit["val_close_nll_after"] <= fit["val_close_nll_before"]
    cfg, _, store, model, _ = load_run(run, "cpu")
    assert model.close_temperature == fit["close_temperature"] != 1.0
    model.close_temperature = 1.0
    T = cfg.model.context_length
    logits, targets = close_logits(model, store, make_windows(store, "val", T), T, 64)
    assert len(targets) == fit["n"]
    again = fit_temperature(logits, targets)
    assert again["close_temperature"] == pytest.approx(fit["close_temperature"], rel=1e-6)
    # the fit is a minimum: a step either way in log T costs val NLL
    from marketgpt.calibration import token_nll
    t = fit["close_temperature"]
    assert token_nll(logits, targets, t) < min(token_nll(logits, targets, t * 1.05), token_nll(logits, targets, t / 1.05))


def test_the_temperature_depends_on_the_val_split_only(run, tmp_path):
    base = temperature(run)
    test_changed = copy_run(run, tmp_path, "test_changed")
    perturb_close_tokens(test_changed, 2)
    assert calibrate_run(test_changed, "cpu", **QUIET)["close_temperature"] == base
    assert not np.array_equal(scores(run)["nll"], scores(test_changed)["nll"])    # the test data did change
    val_changed = copy_run(run, tmp_path, "val_changed")
    perturb_close_tokens(val_changed, 1)
    assert abs(math.log(calibrate_run(val_changed, "cpu", **QUIET)["close_temperature"] / base)) > 1e-3


def test_the_calibrated_density_is_the_tempered_softmax_and_integrates_to_one(run):
    cfg, tok, store, model, _ = load_run(run, "cpu")
    t = model.close_temperature
    T = cfg.model.context_length
    windows = make_windows(store, "test", T)[:4]
    density = close_density(tok)
    got = score_model(model, store, windows, T, density, np.asarray(store.returns), 64)
    model.close_temperature = 1.0
    raw = score_model(model, store, windows, T, density, np.asarray(store.returns), 64)
    logits, rows = [], []
    for w, mask, lg, _ in model_batches(model, store, windows, T, 64):
        logits.append(lg[:, 0])
        rows.append((w[:, :1] + np.arange(1, T + 1))[mask])
    rows = np.concatenate(rows)
    order = np.argsort(rows, kind="stable")                                     # score_model's row order
    rows = rows[order]
    probs = torch.softmax(torch.cat(logits).double() / t, -1).numpy()[order]
    np.testing.assert_array_equal(rows, got["row"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    y = np.asarray(store.returns)[rows]
    np.testing.assert_allclose(got["ret_nll"], density.nll(probs, y), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["ret_nll"], raw["ret_nll"])
    s_lo, s_hi = density.tail_scale
    lo, hi = density.edges[1], density.edges[-2]
    grid = np.unique(np.concatenate([np.linspace(lo - 40 * s_lo, lo, 20_001), np.linspace(lo, hi, 100_001),
                                     np.linspace(hi, hi + 40 * s_hi, 20_001), density.edges[1:-1]]))
    for p in probs[:: max(1, len(probs) // 5)]:
        pdf = np.exp(-density.nll(np.broadcast_to(p, (len(grid), len(p))), grid))
        assert np.trapezoid(pdf, grid) == pytest.approx(1.0, abs=2e-3)


def test_t_1_and_no_file_reproduce_the_uncalibrated_model_exactly(run, tmp_path):
    old = copy_run(run, tmp_path, "old")
    (old / CALIBRATION_FILE).unlink()                    # a run trained before calibration existed
    assert load_run(old, "cpu")[3].close_temperature == 1.0
    before = scores(old)
    one = copy_run(old, tmp_path, "one")
    (one / CALIBRATION_FILE).write_text(json.dumps({"close_temperature": 1.0}))
    for key, value in scores(one).items():
        np.testing.assert_array_equal(value, before[key])
    # evaluate --calibrate fits the same T the training did, and the evaluation then uses it
    results = evaluate_run(old, "val", plots=False, calibrate=True, device="cpu", **QUIET)
    assert temperature(old) == pytest.approx(temperature(run), rel=1e-6)
    assert results["close_temperature"] == temperature(old)


def test_sampling_default_is_the_calibrated_model_and_an_explicit_temperature_replaces_it(run, tmp_path):
    old = copy_run(run, tmp_path, "old")
    (old / CALIBRATION_FILE).unlink()
    cfg = json.loads((run / "config.json").read_text())
    candles = load_candles(load_universe("sample"), "sample", cfg["data"]["data_dir"])
    spx = candles[candles.symbol == "SPX"]
    kw = dict(horizon=3, num_samples=400, seed=5)
    calibrated, uncalibrated = Forecaster.from_pretrained(run, "cpu"), Forecaster.from_pretrained(old, "cpu")
    raw = uncalibrated.predict(spx, **kw)["SPX"].paths
    np.testing.assert_array_equal(raw, uncalibrated.predict(spx, temperature=1.0, **kw)["SPX"].paths)
    np.testing.assert_array_equal(raw, calibrated.predict(spx, temperature=1.0, **kw)["SPX"].paths)
    tempered = calibrated.predict(spx, **kw)["SPX"]
    assert not np.array_equal(raw, tempered.paths)
    # wider (T > 1) or narrower (T < 1) next-day close returns, as the temperature says
    spread = np.std(tempered.log_returns[:, 0]) / np.std(np.log(raw[:, 0, 3] / tempered.last_close))
    assert (spread > 1) == (temperature(run) > 1)


def test_an_ensemble_pools_its_calibrated_members(run):
    a, b = load_run(run, "cpu")[3], load_run(run, "cpu")[3]
    b.close_temperature = 2.0 * a.close_temperature
    cfg, _, store, _, _ = load_run(run, "cpu")
    T = cfg.model.context_length
    windows = make_windows(store, "val", T)[:2]
    pooled, _ = close_logits(Ensemble([a, b], ["a", "b"]), store, windows, T, 64)
    members = [torch.softmax(close_logits(m, store, windows, T, 64)[0].double(), -1) for m in (a, b)]
    # float32 logits: the pool matches to ~5e-5 relative; uncalibrated members would be off by percents
    np.testing.assert_allclose(torch.softmax(pooled.double(), -1), (members[0] + members[1]) / 2, rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("content, message", [("{oops", "invalid JSON"),
                                              ('{"close_temperature": -1}', "must be a positive number"),
                                              ('{"close_temperature": "1.2"}', "must be a positive number"),
                                              ("[1.2]", "must be a positive number")])
def test_a_corrupt_calibration_file_is_a_one_line_error_naming_it(run, tmp_path, content, message):
    bad = copy_run(run, tmp_path, "bad")
    (bad / CALIBRATION_FILE).write_text(content)
    with pytest.raises(MarketGPTError, match=message) as info:
        load_run(bad, "cpu")
    assert str(bad / CALIBRATION_FILE) in str(info.value)
    if content == "{oops":
        result = run_cli("evaluate", bad, "--split", "val")
        err = result.stderr.strip()
        assert result.returncode == 2 and len(err.splitlines()) == 1
        assert err.startswith("marketgpt: error: ") and str(bad / CALIBRATION_FILE) in err
    # the refit the message offers replaces the bad file
    assert calibrate_run(bad, "cpu", **QUIET)["close_temperature"] == pytest.approx(temperature(run), rel=1e-6)
    assert load_run(bad, "cpu")[3].close_temperature == temperature(bad)
