"""Scoring rules against hand-computed values and numerical integration."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from marketgpt import metrics as M

INF = np.inf


def crps_by_integration(cdf, y, breaks, lo=-80.0, hi=80.0):
    """int (F(x) - 1{x >= y})^2 dx by quadrature, split at the breakpoints, at y and on a log grid around y."""
    grid = [y + s * 10.0 ** k for s in (-1, 1) for k in range(-1, 4)]
    pts = sorted({lo, hi, y, *[b for b in [*breaks, *grid] if lo < b < hi]})
    return sum(integrate.quad(lambda x: (cdf(x) - (x >= y)) ** 2, a, b, epsabs=1e-13, epsrel=1e-12, limit=500)[0]
               for a, b in zip(pts, pts[1:]))


# --- binned (piecewise-uniform) distributions: hand-computed values -------------------------------------
def test_crps_uniform_hand_values():
    one = np.array([[1.0]])
    edges = np.array([0.0, 1.0])
    # U(0,1) at 0.5: int_0^.5 x^2 + int_.5^1 (1-x)^2 = 2 * (1/24) = 1/12
    assert M.binned_crps(one, edges, [0.5])[0] == pytest.approx(1 / 12, abs=1e-15)
    # at 2: int_0^1 x^2 dx + (2 - 1) = 4/3; at -1: 1 + int_0^1 (1-x)^2 = 4/3
    assert M.binned_crps(one, edges, [2.0])[0] == pytest.approx(4 / 3, abs=1e-15)
    assert M.binned_crps(one, edges, [-1.0])[0] == pytest.approx(4 / 3, abs=1e-15)
    # two bins [0,1) p=.5, [1,3) p=.5, y=1: int_0^1 (x/2)^2 = 1/12; int_1^3 (1/2 - (x-1)/4)^2 = 1/6 -> 1/4
    assert M.binned_crps([[0.5, 0.5]], [0.0, 1.0, 3.0], [1.0])[0] == pytest.approx(0.25, abs=1e-15)
    # point-like bin: CRPS tends to |y - x0|
    assert M.binned_crps([[1.0]], [0.3, 0.3 + 1e-9], [1.3])[0] == pytest.approx(1.0, abs=1e-8)


def test_nll_of_a_uniform_bin():
    probs, edges = np.array([[0.2, 0.5, 0.3]]), np.array([0.0, 1.0, 3.0, 4.0])
    # y = 2 lies in [1, 3): density 0.5 / 2 = 0.25
    assert M.binned_nll(probs, edges, [2.0])[0] == pytest.approx(math.log(4.0), abs=1e-15)
    assert M.binned_nll(probs, edges, [0.0])[0] == pytest.approx(-math.log(0.2), abs=1e-15)
    assert M.binned_nll(probs, edges, [5.0])[0] == np.inf            # outside a bounded support
    # exponential tail: density p0 / s * exp((y - e1) / s) below the first inner edge
    edges_t = np.array([-INF, 0.0, 1.0, INF])
    got = M.binned_nll(probs, edges_t, [-1.0], tail_scale=(0.5, 2.0))[0]
    assert got == pytest.approx(-math.log(0.2 / 0.5 * math.exp(-1.0 / 0.5)), abs=1e-14)
    got = M.binned_nll(probs, edges_t, [3.0], tail_scale=(0.5, 2.0))[0]
    assert got == pytest.approx(-math.log(0.3 / 2.0 * math.exp(-2.0 / 2.0)), abs=1e-14)


def random_binned(seed, V=7, tails=True):
    rng = np.random.default_rng(seed)
    inner = np.sort(rng.uniform(-2, 2, V - 1))
    edges = np.concatenate([[-INF], inner, [INF]]) if tails else np.concatenate([[inner[0] - 1], inner, [inner[-1] + 1]])
    probs = rng.dirichlet(np.full(V, 0.7))
    probs[rng.integers(V)] = 0.0                                     # an empty bin too
    probs /= probs.sum()
    return probs, edges, (rng.uniform(0.1, 1.0), rng.uniform(0.1, 1.0))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tails", [True, False])
def test_binned_crps_matches_numerical_integration(seed, tails):
    probs, edges, ts = random_binned(seed, tails=tails)
    ys = np.concatenate([edges[1:-1], [edges[1] - 3, edges[-2] + 4, 0.0, 0.123, edges[1] - 0.01]])
    got = M.binned_crps(np.tile(probs, (len(ys), 1)), edges, ys, ts)
    for y, g in zip(ys, got):
        def cdf(x):
            return M.binned_cdf(probs[None], edges, [x], ts)[0]
        assert g == pytest.approx(crps_by_integration(cdf, y, edges[np.isfinite(edges)]), abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_binned_density_cdf_and_quantiles_agree(seed):
    probs, edges, ts = random_binned(seed)
    # the density integrates to 1 and to the CDF
    dens = lambda x: math.exp(-M.binned_nll(probs[None], edges, [x], ts)[0])  # noqa: E731
    pts = [-60.0, *edges[1:-1], 60.0]
    total = sum(integrate.quad(dens, a, b)[0] for a, b in zip(pts, pts[1:]))
    assert total == pytest.approx(1.0, abs=1e-9)
    x0 = 0.37
    part = sum(integrate.quad(dens, a, min(b, x0))[0] for a, b in zip(pts, pts[1:]) if a < x0)
    assert M.binned_cdf(probs[None], edges, [x0], ts)[0] == pytest.approx(part, abs=1e-9)
    q = np.array([0.001, 0.05, 0.3, 0.5, 0.77, 0.999])
    x = M.binned_ppf(np.tile(probs, (len(q), 1)), edges, q, ts)
    assert np.allclose(M.binned_cdf(np.tile(probs, (len(q), 1)), edges, x, ts), q, atol=1e-12)


def test_binned_functions_are_vectorized_and_chunked(monkeypatch):
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 16)                   # force many chunks
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(5), size=50)
    edges = np.array([-INF, -1, 0, 0.5, 2, INF])
    y = rng.normal(0, 1.5, 50)
    for fn in (M.binned_crps, M.binned_cdf, M.binned_nll):
        whole = fn(probs, edges, y, (0.3, 0.6))
        single = np.array([fn(probs[i:i + 1], edges, y[i:i + 1], (0.3, 0.6))[0] for i in range(50)])
        assert np.allclose(whole, single, rtol=0, atol=1e-14)


def test_pit_of_the_true_distribution_is_uniform():
    probs, edges, ts = random_binned(11)
    rng = np.random.default_rng(0)
    u = rng.uniform(size=20000)
    draws = M.binned_ppf(np.tile(probs, (len(u), 1)), edges, u, ts)   # samples by inversion
    pit = M.binned_cdf(np.tile(probs, (len(u), 1)), edges, draws, ts)
    assert np.allclose(M.pit_histogram(pit, 10), 0.1, atol=0.01)
    assert M.coverage(pit, 0.8) == pytest.approx(0.8, abs=0.01)


# --- parametric closed forms ------------------------------------------------------------------------
@pytest.mark.parametrize("y", [-3.0, 0.1, 0.4, 2.5])
def test_gaussian_and_student_t_crps_match_integration(y):
    loc, scale = 0.1, 0.5
    g = crps_by_integration(lambda x: stats.norm.cdf(x, loc, scale), y, [loc])
    assert M.gaussian_crps(y, loc, scale) == pytest.approx(g, abs=1e-8)
    for df in (2.5, 5.0, 30.0):
        t = crps_by_integration(lambda x: stats.t.cdf(x, df, loc, scale), y, [loc], lo=-2000, hi=2000)
        assert M.student_t_crps(y, loc, scale, df) == pytest.approx(t, abs=1e-6)
    assert M.student_t_crps(y, loc, scale, 1e6) == pytest.approx(M.gaussian_crps(y, loc, scale), abs=1e-6)
    # Gaussian at its mean: scale * (2 phi(0) - 1/sqrt(pi)) = scale * (sqrt(2) - 1) / sqrt(pi)
    assert M.gaussian_crps(0.0, 0.0, 2.0) == pytest.approx(2.0 * (math.sqrt(2) - 1) / math.sqrt(math.pi))
    assert M.gaussian_nll(y, loc, scale) == pytest.approx(-stats.norm.logpdf(y, loc, scale))
    assert M.student_t_nll(y, loc, scale, 4.0) == pytest.approx(-stats.t.logpdf(y, 4.0, loc, scale))


# --- calibration, hit rates -------------------------------------------------------------------------
def test_coverage_hand_values():
    pit = np.array([0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 1.0])
    # central 80%: PIT in [0.1, 0.9] -> 0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 0.9 = 7 of 10
    assert M.coverage(pit, 0.8) == pytest.approx(0.7)
    # central 50%: PIT in [0.25, 0.75] -> 0.25, 0.5, 0.75 = 3 of 10
    assert M.coverage(pit, 0.5) == pytest.approx(0.3)
    hist = M.pit_histogram([0.05, 0.15, 0.17, 0.33, 0.55, 0.56, 0.57, 0.99, 1.0, 0.0], 10)
    assert hist.tolist() == pytest.approx([0.2, 0.2, 0, 0.1, 0, 0.3, 0, 0, 0, 0.2])     # 0 and 1 fall in the end bins


def test_coverage_equals_the_quantile_interval_rule():
    probs, edges, ts = random_binned(5)
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1.5, 400)
    P = np.tile(probs, (len(y), 1))
    lo, hi = M.binned_ppf(P, edges, 0.1, ts), M.binned_ppf(P, edges, 0.9, ts)
    inside = ((y >= lo) & (y <= hi)).mean()
    assert M.coverage(M.binned_cdf(P, edges, y, ts), 0.8) == pytest.approx(inside)


def test_wilson_interval_hand_values():
    # 5/10: center 0.5, half = 1.96/(1 + 1.96^2/10) * sqrt(0.025 + 1.96^2/400) = 0.263407
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-6) and hi == pytest.approx(0.763407, abs=1e-6)
    # 0/10: (0, z^2 / (n + z^2)) = (0, 3.8415 / 13.8415)
    lo, hi = M.wilson_interval(0, 10)
    z2 = stats.norm.ppf(0.975) ** 2
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z2 / (10 + z2))
    lo, hi = M.wilson_interval(540, 1000)
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.54 * 0.46 / 1000), rel=0.01)  # ~ +-1.6 points


# --- Diebold-Mariano ---------------------------------------------------------------------------------
def test_diebold_mariano_hand_computed_hac():
    # d = 1, 2, 3, 4; mean 2.5; deviations -1.5 -0.5 0.5 1.5
    # gamma0 = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    # gamma1 = (0.75 - 0.25 + 0.75) / 4 = 0.3125; Bartlett weight at lag 1 of 1: 1 - 1/2
    # long-run variance 1.25 + 2 * 0.5 * 0.3125 = 1.5625; se of the mean sqrt(1.5625 / 4) = 0.625; DM = 4
    res = M.diebold_mariano([1, 2, 3, 4], [0, 0, 0, 0], lag=1)
    assert M.newey_west_variance([1, 2, 3, 4], 1) == pytest.approx(1.5625)
    assert res.statistic == pytest.approx(4.0)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(4.0))
    assert res.p_value == pytest.approx(6.334248e-05, rel=1e-6)
    assert res.mean_difference == 2.5 and res.n == 4
    # lag 0: plain variance 1.25, se sqrt(1.25/4) -> DM = 2.5 / 0.5590 = 4.4721
    assert M.diebold_mariano([1, 2, 3, 4], [0] * 4, lag=0).statistic == pytest.approx(2.5 / math.sqrt(1.25 / 4))
    # antisymmetric in the order of the forecasts
    swapped = M.diebold_mariano([0] * 4, [1, 2, 3, 4], lag=1)
    assert swapped.statistic == pytest.approx(-4.0) and swapped.p_value == pytest.approx(res.p_value)


def test_diebold_mariano_size_under_the_null():
    rng = np.random.default_rng(0)
    rejections = 0
    for _ in range(400):
        e = rng.normal(size=301)
        d = e[1:] + 0.5 * e[:-1]                                     # MA(1) loss difference, mean 0
        rejections += M.diebold_mariano(d, np.zeros_like(d)).p_value < 0.05
    assert 0.02 <= rejections / 400 <= 0.09
    assert M.newey_west_lag(1000) == 6                               # floor(4 * 10^(2/9)) = floor(6.67)


def test_pooled_diebold_mariano_tests_the_asset_day_mean():
    # 20 weekdays of 10 assets at d = -1 and 12 weekend days of 1 asset at d = +2: the asset-day mean is negative
    # (the model better), the mean of the date means positive; the pooled test follows the asset-day mean
    rng = np.random.default_rng(3)
    dates = np.concatenate([np.repeat(np.arange(20), 10), np.arange(20, 32)])
    d = np.concatenate([rng.normal(-1, 0.3, 200), rng.normal(2, 0.3, 12)])
    pooled = M.pooled_diebold_mariano(d, dates)
    date_means = np.array([d[dates == t].mean() for t in range(32)])
    assert pooled.mean_difference == pytest.approx(d.mean()) and pooled.n == 32
    assert pooled.statistic < -2 and M.diebold_mariano(date_means, np.zeros(32)).statistic > 0
    by_dates = M.date_mean_diebold_mariano(d, dates)
    assert by_dates.statistic == pytest.approx(M.diebold_mariano(date_means, np.zeros(32)).statistic)
    assert by_dates.mean_difference == pytest.approx(date_means.mean())
    # rows in any order give the same test; one asset per date is the plain DM on the dates
    order = rng.permutation(d.size)
    assert M.pooled_diebold_mariano(d[order], dates[order]).statistic == pytest.approx(pooled.statistic)
    series = rng.normal(size=50)
    assert M.pooled_diebold_mariano(series, np.arange(50)).statistic == pytest.approx(
        M.diebold_mariano(series, np.zeros(50)).statistic)
    # NaN rows are left out
    assert M.pooled_diebold_mariano(np.append(d, np.nan), np.append(dates, 3)).statistic == pytest.approx(
        pooled.statistic)
    # no finite row: no test
    empty = M.pooled_diebold_mariano([np.nan], [0])
    assert empty.n == 0 and math.isnan(empty.statistic) and M.date_mean_diebold_mariano([], []).n == 0


def test_pooled_diebold_mariano_size_with_a_common_shock_per_date():
    # d = a shock common to a date's 30 assets + own noise, mean 0: testing the 30 x 200 rows as independent
    # rejects far too often; the pooled test (each date a cluster) keeps its size
    rng = np.random.default_rng(1)
    dates = np.repeat(np.arange(200), 30)
    pooled = naive = 0
    for _ in range(300):
        d = np.repeat(rng.normal(size=200), 30) + rng.normal(size=6000)
        pooled += M.pooled_diebold_mariano(d, dates).p_value < 0.05
        naive += M.diebold_mariano(d, np.zeros_like(d), lag=0).p_value < 0.05
    assert 0.02 <= pooled / 300 <= 0.09 and naive / 300 > 0.4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=60), st.integers(0, 6))
def test_newey_west_variance_is_never_negative(d, lag):
    assert M.newey_west_variance(d, lag) >= -1e-12
