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

from marketgpt.calibration import (CALIBRATION_FILE, CHECK_Z, MIN_CATEGORY_TARGETS, WIDTH_BOUNDS, calibrate_run, check_widths,
                                   close_logits, fit_temperature, fit_width, fit_widths, widened_nll, width_map)
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


def model_of(run_dir):
    return load_run(run_dir, "cpu")[3]


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
    assert model_of(run).close_temperature == fit["close_temperature"] != 1.0
    cfg, _, store, model, _ = load_run(run, "cpu", calibrated=False)
    assert model.close_temperature == 1.0 and model.close_width is None
    T = cfg.model.context_length
    logits, targets, _ = close_logits(model, store, make_windows(store, "val", T), T, 64)
    assert len(targets) == fit["n"]
    again = fit_temperature(logits, targets)
    assert again["close_temperature"] == pytest.approx(fit["close_temperature"], rel=1e-6)
    # the fit is a minimum: a step either way in log T costs val NLL
    from marketgpt.calibration import token_nll
    t = fit["close_temperature"]
    assert token_nll(logits, targets, t) < min(token_nll(logits, targets, t * 1.05), token_nll(logits, targets, t / 1.05))


def test_the_widths_are_fitted_on_val_when_they_pass_the_check_on_the_later_val_days(run):
    fit = json.loads((run / CALIBRATION_FILE).read_text())
    check, width, t = fit["width_check"], fit["close_width"], fit["close_temperature"]
    cfg, tok, store, model, _ = load_run(run, "cpu", calibrated=False)
    T = cfg.model.context_length
    logits, targets, rows = close_logits(model, store, make_windows(store, "val", T), T, 64)
    dates = store.dates[rows]
    assert dates.min() < np.datetime64(check["split_date"]) <= dates.max()
    assert check["targets_after"] == int((dates >= np.datetime64(check["split_date"])).sum())
    assert check["kept"] == (check["default_kept"] or bool(check["own"])) == (width is not None)
    assert check["default_kept"] == (check["default_gain"] > 0 and check["default_dm_statistic"] < -CHECK_Z)
    assert set(check["own"]) == {n for n, g in check["category_gain"].items()
                                 if g["nll_gain"] > 0 and g["dm_statistic"] < -CHECK_Z}
    if width is None:          # nothing passed: the loaded model is the tempered one
        assert model_of(run).close_width is None
        return
    assert check["nll_gain"] > 0
    assert set(width["per_category"]) == {n for n in check["own"] if width["targets"][n] >= MIN_CATEGORY_TARGETS}
    density = close_density(tok)
    c = width["default"]
    if check["default_kept"]:      # the default is the val argmin over all targets
        nll = [widened_nll(logits, targets, t, width_map(density, x)) for x in (c / 1.05, c, c * 1.05)]
        assert nll[1] < min(nll[0], nll[2])
    else:
        assert c == 1.0
    assert width["val_close_nll_after"] < fit["val_close_nll_after"]
    assert model_of(run).close_width is not None


def test_each_category_with_enough_val_targets_gets_a_width_that_minimises_its_val_nll(run):
    cfg, tok, store, model, _ = load_run(run, "cpu", calibrated=False)
    t = json.loads((run / CALIBRATION_FILE).read_text())["close_temperature"]
    T = cfg.model.context_length
    logits, targets, rows = close_logits(model, store, make_windows(store, "val", T), T, 64)
    categories = np.asarray(store.category_ids)[store.asset[rows]]
    density = close_density(tok)
    width = fit_widths(logits, targets, categories, store.category_names, t, density)
    counts = {name: int((categories == k).sum()) for k, name in enumerate(store.category_names)}
    assert width["targets"] == counts
    assert sorted(width["per_category"]) == sorted(n for n, c in counts.items() if c >= MIN_CATEGORY_TARGETS)
    assert width["per_category"], f"the sample's val split has categories with >= {MIN_CATEGORY_TARGETS} targets"
    for k, name in enumerate(store.category_names):
        if name not in width["per_category"]:
            continue
        own = categories == k
        c = width["per_category"][name]
        assert WIDTH_BOUNDS[0] < c < WIDTH_BOUNDS[1] and c != pytest.approx(1.0, abs=1e-3)
        nll = [widened_nll(logits[own], targets[own], t, width_map(density, x)) for x in (c / 1.05, c, c * 1.05)]
        assert nll[1] < min(nll[0], nll[2])


def test_the_width_check_keeps_widths_only_where_the_later_val_days_want_them_too(run):
    density = close_density(load_run(run, "cpu")[1])
    V = len(density.edges) - 1
    rng = np.random.default_rng(2)
    n = 20_000
    logits = torch.from_numpy(rng.normal(0, 2.0, (1, V))).repeat(n, 1)
    probs = torch.softmax(logits[0].double(), -1).numpy()
    dates = np.datetime64("2020-01-01") + np.arange(n) // 20
    late = dates >= dates[n // 2]

    def draw(c):      # n targets from the model's density widened by c (a pair: before / after the middle date)
        early, after = (rng.choice(V, size=n, p=q / q.sum()) for q in (probs @ width_map(density, x) for x in c))
        return np.where(late, after, early)

    def check(*cs):    # one category per pair of widths, each on every other target
        cats = np.arange(n) % len(cs)
        targets = np.choose(cats, [draw(c) for c in cs])
        return check_widths(logits, torch.from_numpy(targets), cats, dates, [f"c{i}" for i in range(len(cs))], 1.0,
                            density, min_targets=1000)
    kept = check((1.5, 1.5))
    assert kept["kept"] and kept["default_kept"] and kept["nll_gain"] > 0.01
    assert kept["fitted_before"]["default"] == pytest.approx(1.5, rel=0.05)
    dropped = check((1.5, 1.0))                            # the later days are as the model says
    assert not dropped["kept"] and dropped["default_gain"] < 0
    assert dropped["fitted_before"]["default"] == pytest.approx(1.5, rel=0.05)   # fitted on the early days alone
    both = check((0.7, 0.7), (1.5, 1.5))
    assert both["own"] == ["c0", "c1"] and both["fitted_before"]["per_category"]["c0"] == pytest.approx(0.7, rel=0.05)
    one = check((0.7, 0.7), (1.5, 0.7))                    # c1's own width only held before the middle date
    assert one["own"] == ["c0"] and one["category_gain"]["c1"]["nll_gain"] < 0 < one["category_gain"]["c0"]["nll_gain"]


def test_the_temperature_and_widths_depend_on_the_val_split_only(run, tmp_path):
    base = json.loads((run / CALIBRATION_FILE).read_text())
    test_changed = copy_run(run, tmp_path, "test_changed")
    perturb_close_tokens(test_changed, 2)
    again = calibrate_run(test_changed, "cpu", **QUIET)
    assert again["close_temperature"] == base["close_temperature"] and again["close_width"] == base["close_width"]
    assert not np.array_equal(scores(run)["nll"], scores(test_changed)["nll"])    # the test data did change
    val_changed = copy_run(run, tmp_path, "val_changed")
    perturb_close_tokens(val_changed, 1)
    moved = calibrate_run(val_changed, "cpu", **QUIET)
    assert abs(math.log(moved["close_temperature"] / base["close_temperature"])) > 1e-3
    assert moved["width_check"] != base["width_check"]


def test_the_calibrated_density_is_the_tempered_widened_softmax_and_integrates_to_one(run):
    cfg, tok, store, model, _ = load_run(run, "cpu")
    fit = json.loads((run / CALIBRATION_FILE).read_text())
    t, width = fit["close_temperature"], fit["close_width"] or {"default": 1.0, "per_category": {}}
    T = cfg.model.context_length
    windows = make_windows(store, "test", T)[:4]
    density = close_density(tok)
    got = score_model(model, store, windows, T, density, np.asarray(store.returns), 64)
    raw_model = load_run(run, "cpu", calibrated=False)[3]
    raw = score_model(raw_model, store, windows, T, density, np.asarray(store.returns), 64)
    logits, rows, categories = [], [], []
    for w, mask, lg, _ in model_batches(raw_model, store, windows, T, 64):
        logits.append(lg[:, 0])
        rows.append((w[:, :1] + np.arange(1, T + 1))[mask])
        categories.append(np.repeat(np.asarray(store.category_ids)[w[:, 3]], mask.sum(1)))
    rows, categories = np.concatenate(rows), np.concatenate(categories)
    order = np.argsort(rows, kind="stable")                                     # score_model's row order
    rows, categories = rows[order], categories[order]
    probs = torch.softmax(torch.cat(logits).double() / t, -1).numpy()[order]
    for k, name in enumerate(store.category_names):
        c = width["per_category"].get(name, width["default"])
        probs[categories == k] = probs[categories == k] @ width_map(density, c)
    np.testing.assert_array_equal(rows, got["row"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    y = np.asarray(store.returns)[rows]
    np.testing.assert_allclose(got["ret_nll"], density.nll(probs, y), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["ret_nll"], raw["ret_nll"])
    s_lo, s_hi = density.tail_scale
    lo, hi = density.edges[1], density.edges[-2]
    grid = np.unique(np.concatenate([np.linspace(lo - 40 * s_lo, lo, 20_001), np.linspace(lo, hi, 100_001),
                                     np.linspace(hi, hi + 40 * s_hi, 20_001), density.edges[1:-1]]))
    for p in probs[:: max(1, len(probs) // 5)]:
        pdf = np.exp(-density.nll(np.broadcast_to(p, (len(grid), len(p))), grid))
        assert np.trapezoid(pdf, grid) == pytest.approx(1.0, abs=2e-3)


def test_each_category_is_scored_and_sampled_with_its_own_width_and_new_ones_with_the_default(run, tmp_path):
    fit = json.loads((run / CALIBRATION_FILE).read_text())
    t = fit["close_temperature"]
    cfg, tok, store, raw_model, _ = load_run(run, "cpu", calibrated=False)
    names = store.category_names
    assert len(names) >= 2
    widths = {names[0]: 0.6, names[1]: 1.6}
    two = copy_run(run, tmp_path, "two")
    (two / CALIBRATION_FILE).write_text(json.dumps(
        {"close_temperature": t, "close_width": {"default": 1.3, "per_category": widths}}))
    model = model_of(two)
    density = close_density(tok)
    T = cfg.model.context_length
    windows = make_windows(store, "test", T)
    logits, targets, rows = close_logits(raw_model, store, windows, T, 64)
    cats = np.asarray(store.category_ids)[store.asset[rows]]
    probs = torch.softmax(logits.double() / t, -1).numpy()
    for k, name in enumerate(names):
        probs[cats == k] = probs[cats == k] @ width_map(density, widths.get(name, 1.3))
    order = np.argsort(rows, kind="stable")
    got = score_model(model, store, windows, T, density, np.asarray(store.returns), 64)
    y = np.asarray(store.returns)[rows[order]]
    assert {names[k] for k in np.unique(cats)} >= set(widths)           # rows of both categories are checked
    np.testing.assert_allclose(got["ret_nll"], density.nll(probs[order], y), rtol=1e-4, atol=1e-5)
    # a ticker of a category the run never saw samples with the default width: about 1.3 x the spread at width 1
    assert model.unknown_category is not None and len(model.close_width) == len(names) + 1
    one = copy_run(run, tmp_path, "one")
    (one / CALIBRATION_FILE).write_text(json.dumps(
        {"close_temperature": t, "close_width": {"default": 1.0, "per_category": widths}}))
    candles = load_candles(load_universe("sample"), "sample", json.loads((run / "config.json").read_text())["data"]["data_dir"])
    new = candles[candles.symbol == "SPX"].assign(symbol="NEWFX")
    kw = dict(horizon=1, num_samples=2000, seed=3, categories={"NEWFX": "fx"})
    assert "fx" not in names
    spreads = []
    for d in (two, one):
        r = Forecaster.from_pretrained(d, "cpu").predict(new, **kw)["NEWFX"].log_returns[:, 0]
        spreads.append(np.subtract(*np.percentile(r, [75, 25])))
    assert spreads[0] / spreads[1] == pytest.approx(1.3, rel=0.15)


def test_the_width_map_stretches_the_close_density_about_zero(run):
    density = close_density(load_run(run, "cpu")[1])
    V = len(density.edges) - 1
    np.testing.assert_array_equal(width_map(density, 1.0), np.eye(V))
    probs = np.zeros((50, V))      # mass on the middle half of the bins: a stretch by 1.5 stays on the inner grid
    probs[:, V // 4:3 * V // 4] = np.random.default_rng(0).dirichlet(np.ones(V // 2), 50)
    for c in (0.6, 1.5):
        m = width_map(density, c)
        assert (m >= 0).all()
        np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
        wide = probs @ m
        spread = density.ppf(probs, 0.9) - density.ppf(probs, 0.1)
        np.testing.assert_array_less(np.abs(density.mean(wide) - c * density.mean(probs)), 0.02 * c * spread)
        for q in (0.1, 0.5, 0.9):          # quantiles move by c, up to the grid's resolution near them
            before, after = density.ppf(probs, q), density.ppf(wide, q)
            step = np.diff(density.edges[1:-1]).max()
            np.testing.assert_allclose(after, c * before, atol=step)


def test_fit_width_recovers_a_stretch_of_the_density(run):
    density = close_density(load_run(run, "cpu")[1])
    V = len(density.edges) - 1
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(0, 2.0, (1, V))).repeat(20_000, 1)
    for c in (0.7, 1.4):
        truth = torch.softmax(logits[0].double(), -1).numpy() @ width_map(density, c)
        targets = torch.from_numpy(rng.choice(V, size=len(logits), p=truth / truth.sum()))
        assert fit_width(logits, targets, 1.0, density) == pytest.approx(c, rel=0.05)


def test_t_1_and_no_file_reproduce_the_uncalibrated_model_exactly(run, tmp_path):
    old = copy_run(run, tmp_path, "old")
    (old / CALIBRATION_FILE).unlink()                    # a run trained before calibration existed
    assert load_run(old, "cpu")[3].close_temperature == 1.0
    before = scores(old)
    for i, content in enumerate(({"close_temperature": 1.0},
                                 {"close_temperature": 1.0, "close_width": {"default": 1.0, "per_category": {}}})):
        one = copy_run(old, tmp_path, f"one_{i}")
        (one / CALIBRATION_FILE).write_text(json.dumps(content))
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
    assert not np.array_equal(raw, calibrated.predict(spx, **kw)["SPX"].paths)
    # wider (T > 1) or narrower (T < 1) next-day close returns, as the temperature says
    t = temperature(run)
    t_only = copy_run(old, tmp_path, "t_only")
    (t_only / CALIBRATION_FILE).write_text(json.dumps({"close_temperature": t}))
    tempered = Forecaster.from_pretrained(t_only, "cpu").predict(spx, **kw)["SPX"]
    spread = np.std(tempered.log_returns[:, 0]) / np.std(np.log(raw[:, 0, 3] / tempered.last_close))
    assert (spread > 1) == (t > 1)
    # and a width stretches them about 0: the same uniforms land at about c times the tempered returns' quantiles
    wide = {**kw, "num_samples": 2000}
    base = Forecaster.from_pretrained(t_only, "cpu").predict(spx, **wide)["SPX"].log_returns[:, 0]
    for c in (0.5, 2.0):
        stretched = copy_run(old, tmp_path, f"width_{c}")
        (stretched / CALIBRATION_FILE).write_text(json.dumps(
            {"close_temperature": t, "close_width": {"default": c, "per_category": {}}}))
        got = Forecaster.from_pretrained(stretched, "cpu").predict(spx, **wide)["SPX"].log_returns[:, 0]
        iqr = [np.subtract(*np.percentile(x, [75, 25])) for x in (got, base)]
        assert iqr[0] / iqr[1] == pytest.approx(c, rel=0.15)


def test_an_ensemble_pools_its_calibrated_members(run):
    a, b = load_run(run, "cpu")[3], load_run(run, "cpu")[3]
    b.close_temperature = 2.0 * a.close_temperature
    cfg, _, store, _, _ = load_run(run, "cpu")
    T = cfg.model.context_length
    windows = make_windows(store, "val", T)[:2]
    pooled = close_logits(Ensemble([a, b], ["a", "b"]), store, windows, T, 64)[0]
    members = [torch.softmax(close_logits(m, store, windows, T, 64)[0].double(), -1) for m in (a, b)]
    # float32 logits: the pool matches to ~5e-5 relative; uncalibrated members would be off by percents
    np.testing.assert_allclose(torch.softmax(pooled.double(), -1), (members[0] + members[1]) / 2, rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("content, message", [("{oops", "invalid JSON"),
                                              ('{"close_temperature": -1}', "must be a positive number"),
                                              ('{"close_temperature": "1.2"}', "must be a positive number"),
                                              ("[1.2]", "must be a positive number"),
                                              ('{"close_temperature": 1.1, "close_width": [2]}', "must be an object"),
                                              ('{"close_temperature": 1.1, "close_width": {"default": 0, '
                                               '"per_category": {}}}', "close_width.default must be a positive"),
                                              ('{"close_temperature": 1.1, "close_width": {"default": 1.2, '
                                               '"per_category": {"fx": null}}}', "per_category.fx must be")])
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
