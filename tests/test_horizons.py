"""Multi-horizon evaluation: sample scoring rules, the baselines' no-look-ahead property and GARCH simulation, and
the horizons block (skill on the rows a baseline covers, DM lags), plot and report."""

import json

import numpy as np
import pandas as pd
import pytest

from marketgpt import metrics as M
from marketgpt.baselines import MIN_TRAIN_GARCH, garch_backcast, garch_variance
from marketgpt.errors import MarketGPTError
from marketgpt.evaluate.horizon_baselines import (
    baseline_samples,
    bootstrap_samples,
    garch_t_samples,
    random_walk_samples,
    realised_returns,
    simulate_garch_t,
)
from marketgpt.evaluate.horizons import (
    PINBALL_LEVELS,
    brier,
    crps_samples,
    horizon_definitions,
    horizon_report_lines,
    interval_coverage,
    long_table,
    pinball,
    plot_horizon_skill,
    prob_up,
    score_horizon_forecasts,
)

TRUE = {"mu": 0.04, "omega": 0.04, "alpha": 0.08, "beta": 0.9, "nu": 7.0}   # percent units


def garch_series(n: int, params: dict, seed: int) -> np.ndarray:
    """Daily log returns (not percent) of a GARCH(1,1) with standardized t errors started at the stationary variance."""
    rng = np.random.default_rng(seed)
    mu, omega, alpha, beta, nu = (params[k] for k in ("mu", "omega", "alpha", "beta", "nu"))
    z = rng.standard_t(nu, n) * np.sqrt((nu - 2) / nu)
    s2, x = omega / (1 - alpha - beta), np.empty(n)
    for t in range(n):
        eps = np.sqrt(s2) * z[t]
        x[t] = mu + eps
        s2 = omega + alpha * eps ** 2 + beta * s2
    return x / 100.0


def analytic_horizon_variance(params: dict, s2_next: float, horizons) -> np.ndarray:
    """Var(r_h) = sum_{k=1}^h E[s2_k], E[s2_k] = sbar + (alpha + beta)^(k-1) (s2_next - sbar)."""
    persistence = params["alpha"] + params["beta"]
    sbar = params["omega"] / (1 - persistence)
    step = sbar + persistence ** np.arange(max(horizons)) * (s2_next - sbar)
    return np.cumsum(step)[np.asarray(horizons) - 1]


def next_variance(x_percent: np.ndarray, params: dict) -> float:
    return params["omega"] + params["alpha"] * (x_percent[-1] - params["mu"]) ** 2 \
        + params["beta"] * garch_variance(x_percent, params)[-1]


# ---------------------------------------------------------------------------------------------------
# scoring rules
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("S", [2, 3, 25])
def test_crps_matches_the_pairwise_formula(S):
    rng = np.random.default_rng(S)
    x, y = rng.standard_t(3, (40, S)), rng.normal(size=40)
    pairs = np.abs(x[:, :, None] - x[:, None, :]).sum(axis=(1, 2))
    direct = np.abs(x - y[:, None]).mean(axis=1) - pairs / (2 * S * (S - 1))
    np.testing.assert_allclose(crps_samples(x, y), direct, rtol=1e-12, atol=1e-14)


def test_crps_of_many_gaussian_samples_is_the_closed_form():
    """With S = 20,000 the relative error per row has sd 0.8% (measured: max 2.4% over these 200 rows, 0.006% on
    their mean CRPS); tolerances 5% per row and 0.2% on the mean (~3.5 sd of the mean's error)."""
    rng = np.random.default_rng(1)
    n, S = 200, 20_000
    loc, scale = rng.normal(0, 0.01, n), rng.uniform(0.005, 0.03, n)
    y = loc + scale * rng.standard_t(4, n)
    x = loc[:, None] + scale[:, None] * rng.standard_normal((n, S))
    exact = M.gaussian_crps(y, loc, scale)
    got = crps_samples(x, y)
    assert np.abs(got / exact - 1).max() < 0.05
    assert abs(got.mean() / exact.mean() - 1) < 0.002


def test_missing_rows_score_nan_and_bad_shapes_are_refused():
    x = np.random.default_rng(0).normal(size=(3, 10))
    x[1, 4] = np.nan
    y = np.zeros(3)
    for out in (crps_samples(x, y), interval_coverage(x, y, 0.8), prob_up(x), pinball(x, y)[:, 0]):
        assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    with pytest.raises(MarketGPTError):
        crps_samples(x, np.zeros(4))
    with pytest.raises(MarketGPTError):
        crps_samples(x[:, :1], y)


def test_pinball_of_a_point_forecast():
    y = np.random.default_rng(2).normal(size=50)
    levels = np.asarray(PINBALL_LEVELS)
    assert np.array_equal(pinball(np.repeat(y[:, None], 8, axis=1), y), np.zeros((50, len(levels))))
    d = 0.3                                                     # forecast d too high: loss (1 - tau) d per level
    np.testing.assert_allclose(pinball(np.repeat(y[:, None] + d, 8, axis=1), y), np.tile((1 - levels) * d, (50, 1)))


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_coverage_of_samples_from_the_true_distribution_is_nominal(level):
    """4,000 rows: binomial sd of the coverage <= 0.008; a forecast half as wide misses by > 0.1."""
    rng = np.random.default_rng(3)
    n, S = 4000, 400
    loc, scale = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    y = loc + scale * rng.standard_normal(n)
    z = rng.standard_normal((n, S))
    assert abs(interval_coverage(loc[:, None] + scale[:, None] * z, y, level).mean() - level) < 0.025
    assert interval_coverage(loc[:, None] + 0.5 * scale[:, None] * z, y, level).mean() < level - 0.1


def test_brier_counts_a_flat_day_as_not_up():
    y = np.array([0.01, -0.01, 0.0])
    samples = np.array([[0.1, 0.2, -0.1, 0.3]] * 3)
    assert np.allclose(prob_up(samples), 0.75)
    np.testing.assert_allclose(brier(prob_up(samples), y), [0.0625, 0.5625, 0.5625])


def test_dm_with_h_minus_one_lags_widens_the_variance_of_an_ma_series():
    """d_t = sum of 5 consecutive iid shocks (MA(4), as overlapping 5-day outcomes): its long-run variance is 5x
    gamma_0, and 4 Bartlett lags recover 3.4x of it, so the DM statistic shrinks by ~sqrt(3.4)."""
    e = np.random.default_rng(4).normal(size=3004)
    d = np.convolve(e, np.ones(5), mode="valid") + 0.3
    zero, four = M.diebold_mariano(d, np.zeros_like(d), lag=0), M.diebold_mariano(d, np.zeros_like(d), lag=4)
    var = lambda r: r.n * (r.mean_difference / r.statistic) ** 2   # noqa: E731
    assert var(four) > 2.5 * var(zero)
    assert four.p_value > zero.p_value


# ---------------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------------
HORIZONS = (1, 5, 20)
SAMPLERS = {"random_walk": lambda r, o: random_walk_samples(r, o, HORIZONS, 200, (7, 0)),
            "bootstrap": lambda r, o: bootstrap_samples(r, o, HORIZONS, 200, (7, 0)),
            "garch_t": lambda r, o: garch_t_samples(r, o, HORIZONS, 200, (7, 0))[0]}


@pytest.fixture(scope="module")
def series():
    return garch_series(420, TRUE, seed=5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_baselines_do_not_look_ahead(series, name):
    sample = SAMPLERS[name]
    origins = np.array([260, 280, 300, 330])
    base = sample(series, origins)
    assert np.isfinite(base).all()
    future = series.copy()
    future[301:] = np.random.default_rng(6).normal(0, 0.05, len(series) - 301)
    changed = sample(future, origins)
    assert changed[:3].tobytes() == base[:3].tobytes()
    assert not np.array_equal(changed[3], base[3])
    assert sample(series[:301], origins[:3]).tobytes() == base[:3].tobytes()   # the future may even be absent
    past = series.copy()
    past[250] += 0.03
    assert all(not np.array_equal(a, b) for a, b in zip(sample(past, origins), base))


def test_garch_keeps_its_fit_between_refits_and_tracks_the_realised_returns(series):
    origins = np.array([260, 280, 300, 330])
    base, info = garch_t_samples(series, origins, HORIZONS, 200, 7, refit_every=20)
    assert [f["origin"] for f in info["fits"]] == [260]
    moved = series.copy()
    moved[299] += 0.05                                          # after the only fit: reaches 300 via the state
    again, info2 = garch_t_samples(moved, origins, HORIZONS, 200, 7, refit_every=20)
    assert info2["fits"] == info["fits"]
    assert again[:2].tobytes() == base[:2].tobytes() and not np.array_equal(again[2], base[2])
    assert again[2, 0].var() > 1.5 * base[2, 0].var()          # a 5% shock the day before: measured 2.4x
    refits = garch_t_samples(series, origins, HORIZONS, 200, 7, refit_every=2)[1]
    assert [f["origin"] for f in refits["fits"]] == [260, 300]


def test_garch_without_enough_past_or_a_usable_fit_is_counted(series):
    origins = np.array([100, MIN_TRAIN_GARCH - 2, MIN_TRAIN_GARCH - 1])
    samples, info = garch_t_samples(series, origins, HORIZONS, 50, 0)
    assert np.isnan(samples[:2]).all() and np.isfinite(samples[2]).all()
    assert (info["too_short"], info["unusable_fit"], info["missing"]) == (2, 0, 2)
    flat = np.full(300, 0.001)
    samples, info = garch_t_samples(flat, np.array([260, 270]), HORIZONS, 50, 0)
    assert np.isnan(samples).all() and (info["unusable_fit"], info["missing"]) == (2, 2)
    assert info["fits"][0]["unusable"] == "constant training returns"
    lines = horizon_report_lines({}, garch={"FLAT": info})
    assert any("FLAT: 2 of 2 origins" in line and "constant training returns" in line for line in lines)


def test_garch_simulation_matches_the_analytic_horizon_variance():
    """Known parameters: with S = 200,000 paths the variance is off by < 0.7% at every horizon (measured), the
    tolerance 3%; fitted parameters on 3,000 returns: the same check through garch_t_samples with 50,000 paths
    (measured < 0.8%, tolerance 4%)."""
    x = garch_series(3000, TRUE, seed=8)
    horizons = np.array([1, 2, 5, 10, 20])
    known = {**TRUE, "backcast": garch_backcast(100 * x - 100 * x.mean())}
    s2 = next_variance(100 * x, known)
    sims = simulate_garch_t(known, s2, horizons, 200_000, np.random.default_rng(9))
    analytic = analytic_horizon_variance(known, s2, horizons)
    np.testing.assert_allclose(sims.var(axis=1), analytic, rtol=0.03)
    assert (np.abs(sims.mean(axis=1) - horizons * TRUE["mu"]) < 5 * np.sqrt(analytic / 200_000)).all()
    samples, info = garch_t_samples(x, np.array([len(x) - 1]), horizons, 50_000, 3)
    fit = info["fits"][0]
    assert abs(fit["alpha"] + fit["beta"] - 0.98) < 0.03
    expected = analytic_horizon_variance(fit, next_variance(100 * x, fit), horizons) / 1e4
    np.testing.assert_allclose(samples[0].var(axis=1), expected, rtol=0.04)


def test_random_walk_and_bootstrap_use_the_past_only(series):
    t, S = 300, 20_000
    rw = random_walk_samples(series, [t], HORIZONS, S, 1)[0]
    past = series[:t + 1]
    np.testing.assert_allclose(rw.mean(axis=1), np.array(HORIZONS) * past.mean(), atol=4 * past.std() * np.sqrt(20 / S))
    np.testing.assert_allclose(rw.var(axis=1), np.array(HORIZONS) * past.var(ddof=1), rtol=0.05)
    boot = bootstrap_samples(series, [t], HORIZONS, 500, 1)[0]
    for j, h in enumerate(HORIZONS):
        windows = np.convolve(past, np.ones(h), mode="valid")
        assert np.isclose(boot[j][:, None], windows[None, :], rtol=0, atol=1e-12).any(axis=1).all()
    late = bootstrap_samples(series, [25], HORIZONS, 10, 1)[0]
    assert np.isfinite(late[:2]).all() and np.isnan(late[2]).all()    # 26 returns hold only 7 20-day windows


def test_realised_returns_are_the_sums_after_the_origin(series):
    r = realised_returns(series, [10, 415], HORIZONS)
    np.testing.assert_allclose(r[0], [series[11:11 + h].sum() for h in HORIZONS], rtol=1e-10)
    assert np.isfinite(r[1, 0]) and np.isnan(r[1, 1:]).all()
    with pytest.raises(MarketGPTError):
        realised_returns(series, [5, 3], HORIZONS)
    with pytest.raises(MarketGPTError):
        realised_returns(series, [5], (5, 1))


# ---------------------------------------------------------------------------------------------------
# the horizons block, plot and report
# ---------------------------------------------------------------------------------------------------
def _table(n_origins: int = 80, S: int = 64):
    """Two assets in two categories, horizons 1 and 5: the model a bit sharper than the truth, one baseline
    calibrated, one missing on a third of the rows where the model is far off."""
    rng = np.random.default_rng(10)
    dates = pd.bdate_range("2024-01-01", periods=n_origins)
    assets = []
    for k, (sym, cat) in enumerate((("AAA", "equity"), ("BBB", "crypto"))):
        h = np.array([1, 5])
        sd = 0.01 * np.sqrt(h) * (1 + k)
        y = rng.normal(size=(n_origins, 2)) * sd
        model = 0.8 * sd[:, None] * rng.standard_normal((n_origins, 2, S))
        model[: n_origins // 3] += 0.2                         # way off: the rows the second baseline lacks
        good = sd[:, None] * rng.standard_normal((n_origins, 2, S))
        patchy = good.copy()
        patchy[: n_origins // 3] = np.nan
        assets.append({"symbol": sym, "category": cat, "origins": dates, "horizons": h, "y": y,
                       "samples": {"model": model, "random_walk": good, "garch_t": patchy}})
    return long_table(assets)


def test_skill_counts_only_the_rows_where_the_baseline_exists():
    records, samples = _table()
    out = score_horizon_forecasts(records, samples)
    assert sorted(out) == ["1", "5"] and sorted(out["1"]["per_asset"]) == ["AAA", "BBB"]
    y = records["y"].to_numpy()
    model, garch = crps_samples(samples["model"], y), crps_samples(samples["garch_t"], y)
    for h in (1, 5):
        rows = (records["h"] == h).to_numpy()
        ok = rows & np.isfinite(garch)
        block = out[str(h)]["overall"]
        assert block["garch_t"]["n"] == ok.sum() < block["n"] == rows.sum()
        skill = block["skill"]["crps_vs_garch_t"]
        assert skill == pytest.approx(1 - model[ok].mean() / garch[ok].mean(), rel=1e-12)
        assert skill != pytest.approx(1 - model[rows].mean() / garch[ok].mean(), rel=1e-3)
        assert out[str(h)]["per_category"]["crypto"]["n"] == out[str(h)]["per_asset"]["BBB"]["n"]
        assert out[str(h)]["per_asset"]["BBB"]["category"] == "crypto"


def test_dm_averages_assets_per_date_and_uses_h_minus_one_lags():
    records, samples = _table()
    out = score_horizon_forecasts(records, samples)
    y = records["y"].to_numpy()
    diff = crps_samples(samples["model"], y) - crps_samples(samples["random_walk"], y)
    for h in (1, 5):
        rows = (records["h"] == h).to_numpy()
        d = pd.Series(diff[rows]).groupby(records["origin"][rows].to_numpy()).mean().sort_index().to_numpy()
        expected = M.diebold_mariano(d, np.zeros_like(d), lag=h - 1)
        dm = out[str(h)]["overall"]["dm"]["vs_random_walk"]
        assert dm["lag"] == h - 1 and dm["n"] == len(d) == 80
        assert dm["statistic"] == pytest.approx(expected.statistic, rel=1e-12)


def test_block_is_json_and_feeds_the_plot_and_report(tmp_path):
    records, samples = _table(n_origins=30, S=16)
    out = score_horizon_forecasts(records, samples)
    json.dumps(out, allow_nan=False)
    block = out["5"]["overall"]
    assert set(block["model"]["pinball"]) == {f"{lv:g}" for lv in PINBALL_LEVELS}
    assert {"coverage_50", "coverage_80", "coverage_95", "brier", "crps"} <= set(block["random_walk"])
    png = plot_horizon_skill(out, tmp_path / "skill.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = horizon_report_lines(out, plot="skill.png")
    tables = [line for line in lines if line.startswith("| group")]
    assert len(tables) == 2 and "n GARCH-t" in tables[0] and "DM p (RW)" in tables[0]
    text = "\n".join(lines)
    assert "\n| crypto (category) |" in text and "\n| AAA |" in text and "![CRPS skill per horizon](skill.png)" in lines
    assert "refitted every 20 origins" in horizon_definitions()["garch_t"]


def test_bad_records_are_refused():
    records, samples = _table(n_origins=10, S=8)
    with pytest.raises(MarketGPTError, match="columns"):
        score_horizon_forecasts(records.drop(columns="category"), samples)
    with pytest.raises(MarketGPTError, match="model"):
        score_horizon_forecasts(records, {k: v for k, v in samples.items() if k != "model"})
    broken = {**samples, "model": samples["garch_t"]}
    with pytest.raises(MarketGPTError, match="no samples"):
        score_horizon_forecasts(records, broken)


def test_baseline_samples_bundles_the_three(series):
    out, info = baseline_samples(series, np.array([300]), HORIZONS, 20, 0)
    assert sorted(out) == ["bootstrap", "garch_t", "random_walk"] and info["missing"] == 0
    assert all(v.shape == (1, 3, 20) and np.isfinite(v).all() for v in out.values())
