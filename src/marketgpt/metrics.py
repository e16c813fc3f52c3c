"""Scoring rules and tests for probabilistic forecasts: pure functions of numpy arrays (numpy/scipy only).

Binned (piecewise-uniform) predictive distributions
---------------------------------------------------
A forecast is a row of bin probabilities ``probs`` (N, V) over bins with boundaries ``edges`` (V+1,),
``edges[0]`` may be ``-inf`` and ``edges[-1]`` ``+inf``. Inside a finite bin the probability is
spread uniformly (density ``p_k / width_k``). An open-ended outer bin needs a tail rule: an
exponential tail with scale ``s`` hanging off its finite edge, given as ``tail_scale=(s_left,
s_right)``: density ``p_0 / s * exp((x - edges[1]) / s)`` for ``x < edges[1]`` and
``p_{V-1} / s * exp(-(x - edges[V-1]) / s)`` for ``x >= edges[V-1]``. The CDF is then continuous and
piecewise linear inside, exponential in the tails; CDF, density, quantiles and CRPS have closed forms.

CRPS(F, y) = integral of (F(x) - 1{x >= y})^2 dx, in the units of y (lower is better).
NLL = -log density at y, in nats (lower is better); it depends on the units of y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "binned_cdf", "binned_nll", "binned_crps", "binned_ppf",
    "gaussian_nll", "gaussian_crps", "gaussian_cdf", "student_t_nll", "student_t_crps", "student_t_cdf",
    "coverage", "pit_histogram", "wilson_interval", "newey_west_lag", "newey_west_variance",
    "DMResult", "diebold_mariano", "pooled_diebold_mariano",
]

_CHUNK_ELEMENTS = 1 << 22   # rows x bins processed at once by the binned functions (bounded memory)


# ---------------------------------------------------------------------------------------------------
# binned (piecewise-uniform) distributions
# ---------------------------------------------------------------------------------------------------
def _check_binned(probs, edges, y, tail_scale):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    edges = np.asarray(edges, dtype=np.float64)
    N, V = probs.shape
    if edges.shape != (V + 1,):
        raise ValueError(f"edges must have shape ({V + 1},) for {V} bins, got {edges.shape}")
    if np.isnan(edges).any() or (np.diff(edges) <= 0).any():
        raise ValueError("edges must be strictly increasing")
    if not np.isfinite(edges[1:-1]).all():
        raise ValueError("only the outermost edges may be infinite")
    left_open, right_open = bool(np.isneginf(edges[0])), bool(np.isposinf(edges[-1]))
    if (left_open or right_open) and V < 2:
        raise ValueError("an open-ended bin needs a finite edge: use at least 2 bins")
    if tail_scale is None:
        if left_open or right_open:
            raise ValueError("open-ended outer bins need tail_scale=(s_left, s_right)")
        tail_scale = (1.0, 1.0)
    s_lo, s_hi = (float(s) for s in tail_scale)
    if (left_open and not s_lo > 0) or (right_open and not s_hi > 0):
        raise ValueError(f"tail scales must be > 0, got {tail_scale}")
    if y is not None:
        y = np.broadcast_to(np.asarray(y, dtype=np.float64), (N,))
    return probs, edges, y, s_lo, s_hi, left_open, right_open


def _chunks(N: int, V: int):
    step = max(1, _CHUNK_ELEMENTS // max(V, 1))
    for i in range(0, N, step):
        yield slice(i, min(N, i + step))


def _locate(edges: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bin index of y: number of inner edges <= y (bins are [edges[k], edges[k+1]))."""
    return np.searchsorted(edges[1:-1], y, side="right")


def binned_cdf(probs, edges, y, tail_scale=None) -> np.ndarray:
    """F(y) of each binned forecast (N,)."""
    probs, edges, y, s_lo, s_hi, left_open, right_open = _check_binned(probs, edges, y, tail_scale)
    N, V = probs.shape
    out = np.empty(N)
    for sl in _chunks(N, V):
        p, yy = probs[sl], y[sl]
        j = _locate(edges, yy)
        rows = np.arange(len(yy))
        below = np.cumsum(p, axis=1) - p                       # C_k: mass of bins below bin k
        c, pj = below[rows, j], p[rows, j]
        lo, hi = edges[j], edges[j + 1]
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            f = c + pj * np.clip((yy - lo) / (hi - lo), 0.0, 1.0)
            if left_open:
                t = j == 0
                f[t] = pj[t] * np.exp(np.minimum(yy[t] - hi[t], 0.0) / s_lo)
            if right_open:
                t = j == V - 1
                f[t] = 1.0 - pj[t] * np.exp(-np.maximum(yy[t] - lo[t], 0.0) / s_hi)
        if not left_open:
            f[yy < edges[0]] = 0.0
        if not right_open:
            f[yy >= edges[-1]] = 1.0
        out[sl] = np.clip(f, 0.0, 1.0)
    return out


def binned_nll(probs, edges, y, tail_scale=None) -> np.ndarray:
    """-log density at y (nats), (N,): -log(p_k / width_k) inside a finite bin, the exponential tail's
    density in an open-ended one; +inf outside a bounded support or in a bin of probability 0."""
    probs, edges, y, s_lo, s_hi, left_open, right_open = _check_binned(probs, edges, y, tail_scale)
    N, V = probs.shape
    j = _locate(edges, y)
    pj = probs[np.arange(N), j]
    lo, hi = edges[j], edges[j + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.log(pj) + np.log(hi - lo)
        if left_open:
            t = j == 0
            out[t] = -np.log(pj[t]) + math.log(s_lo) - (y[t] - hi[t]) / s_lo
        if right_open:
            t = j == V - 1
            out[t] = -np.log(pj[t]) + math.log(s_hi) + (y[t] - lo[t]) / s_hi
    outside = (y < edges[0]) | (y >= edges[-1])
    out[outside] = np.inf
    return out


def binned_crps(probs, edges, y, tail_scale=None) -> np.ndarray:
    """CRPS of each binned forecast at y (N,), closed form, O(V) per forecast.

    CRPS = sum over bins below y's bin of int F^2 + sum over bins above of int (1-F)^2 + the two partial
    integrals inside y's bin. Inside a finite bin of width w, F runs linearly from C to C + p:
    int F^2 = w (C^2 + C p + p^2/3). In the left tail F = p0 exp((x-b)/s): int F^2 = p0^2 s / 2; in the
    right tail 1 - F = p exp(-(x-b)/s): int (1-F)^2 = p^2 s / 2. Outside a bounded support, the
    distance to it is added (F is 0 or 1 there).
    """
    probs, edges, y, s_lo, s_hi, left_open, right_open = _check_binned(probs, edges, y, tail_scale)
    N, V = probs.shape
    out = np.empty(N)
    width = np.diff(edges)                                     # inf for open bins
    w_fin = np.where(np.isfinite(width), width, 0.0)           # open bins' integrals are added separately
    for sl in _chunks(N, V):
        p, yy = probs[sl], y[sl]
        n = len(yy)
        rows = np.arange(n)
        cum = np.cumsum(p, axis=1)                             # C_{k+1}: mass up to the end of bin k
        below = cum - p                                        # C_k
        # int over bin k of F^2 = w (C_k C_{k+1} + p^2/3); of (1-F)^2 = that + w (1 - C_k - C_{k+1})
        A = p * p
        A *= 1 / 3
        A += below * cum
        A *= w_fin
        B = 1.0 - below - cum
        B *= w_fin
        B += A
        if left_open:
            A[:, 0] = p[:, 0] ** 2 * s_lo / 2
            B[:, 0] = 0.0                                      # never needed whole
        if right_open:
            B[:, -1] = p[:, -1] ** 2 * s_hi / 2
            A[:, -1] = 0.0
        np.cumsum(A, axis=1, out=A)
        np.cumsum(B, axis=1, out=B)
        j = _locate(edges, yy)
        b_j = B[rows, j]
        a_prev = np.where(j > 0, A[rows, np.maximum(j - 1, 0)], 0.0)
        total = a_prev + (B[:, -1] - b_j)                      # sum of A over bins < j, of B over bins > j
        c, pj = below[rows, j], p[rows, j]
        g = 1.0 - c
        lo, hi = edges[j], edges[j + 1]
        w = hi - lo
        with np.errstate(invalid="ignore", over="ignore"):
            u = np.clip((yy - lo) / w, 0.0, 1.0)
            part = w * (c ** 2 * u + c * pj * u ** 2 + pj ** 2 * u ** 3 / 3)            # int_lo^y F^2
            part += w * ((g ** 2 - g * pj + pj ** 2 / 3) - (g ** 2 * u - g * pj * u ** 2 + pj ** 2 * u ** 3 / 3))
        if left_open:
            t = j == 0
            if t.any():
                d = np.minimum(yy[t] - hi[t], 0.0)             # <= 0
                e1, e2 = np.exp(d / s_lo), np.exp(2 * d / s_lo)
                q = pj[t]
                part[t] = q ** 2 * s_lo / 2 * e2 + (-d - 2 * q * s_lo * (1 - e1) + q ** 2 * s_lo / 2 * (1 - e2))
        if right_open:
            t = j == V - 1
            if t.any():
                d = np.maximum(yy[t] - lo[t], 0.0)             # >= 0
                e1, e2 = np.exp(-d / s_hi), np.exp(-2 * d / s_hi)
                q = pj[t]
                part[t] = q ** 2 * s_hi / 2 * e2 + (d - 2 * q * s_hi * (1 - e1) + q ** 2 * s_hi / 2 * (1 - e2))
        res = total + part
        if not left_open:
            res = res + np.maximum(edges[0] - yy, 0.0)         # 1 - F = 1 between y and the support
        if not right_open:
            res = res + np.maximum(yy - edges[-1], 0.0)
        out[sl] = res
    return out


def binned_ppf(probs, edges, q, tail_scale=None) -> np.ndarray:
    """Quantile at level q (scalar or (N,)) of each binned forecast (N,)."""
    probs, edges, _, s_lo, s_hi, left_open, right_open = _check_binned(probs, edges, None, tail_scale)
    N, V = probs.shape
    q = np.broadcast_to(np.asarray(q, dtype=np.float64), (N,))
    out = np.empty(N)
    for sl in _chunks(N, V):
        p, qq = probs[sl], q[sl]
        rows = np.arange(len(qq))
        upper = np.cumsum(p, axis=1)
        j = np.minimum((upper <= qq[:, None]).sum(axis=1), V - 1)
        while True:                                            # skip empty bins at the end
            empty = (p[rows, j] <= 0) & (j > 0)
            if not empty.any():
                break
            j[empty] -= 1
        c, pj = upper[rows, j] - p[rows, j], p[rows, j]
        lo, hi = edges[j], edges[j + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            x = lo + np.clip((qq - c) / pj, 0.0, 1.0) * (hi - lo)
            if left_open:
                t = j == 0
                x[t] = hi[t] + s_lo * np.log(np.minimum(qq[t] / pj[t], 1.0))
            if right_open:
                t = j == V - 1
                x[t] = lo[t] - s_hi * np.log(np.clip((1.0 - qq[t]) / pj[t], 0.0, 1.0))
        out[sl] = x
    return out


# ---------------------------------------------------------------------------------------------------
# parametric distributions (closed forms)
# ---------------------------------------------------------------------------------------------------
def gaussian_nll(y, loc, scale) -> np.ndarray:
    z = (np.asarray(y, dtype=np.float64) - loc) / scale
    return 0.5 * z ** 2 + np.log(scale) + 0.5 * math.log(2 * math.pi)


def gaussian_cdf(y, loc, scale) -> np.ndarray:
    return special.ndtr((np.asarray(y, dtype=np.float64) - loc) / scale)


def gaussian_crps(y, loc, scale) -> np.ndarray:
    """CRPS of N(loc, scale^2) at y: scale * [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)]."""
    z = (np.asarray(y, dtype=np.float64) - loc) / scale
    pdf = np.exp(-0.5 * z ** 2) / math.sqrt(2 * math.pi)
    return scale * (z * (2 * special.ndtr(z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def student_t_nll(y, loc, scale, df) -> np.ndarray:
    """-log density of loc + scale * T_df at y (scale is the t scale, not the standard deviation)."""
    return -stats.t.logpdf(np.asarray(y, dtype=np.float64), df, loc=loc, scale=scale)


def student_t_cdf(y, loc, scale, df) -> np.ndarray:
    return stats.t.cdf(np.asarray(y, dtype=np.float64), df, loc=loc, scale=scale)


def student_t_crps(y, loc, scale, df) -> np.ndarray:
    """CRPS of loc + scale * T_df (df > 1) at y (Jordan, Krueger & Lerch 2019, scoringRules):
    scale * [z (2 F(z) - 1) + 2 f(z) (df + z^2) / (df - 1) - 2 sqrt(df) B(1/2, df - 1/2) / ((df - 1) B(1/2, df/2)^2)]."""
    df = np.asarray(df, dtype=np.float64)
    if (df <= 1).any():
        raise ValueError("the CRPS of a Student-t needs df > 1 (finite mean)")
    z = (np.asarray(y, dtype=np.float64) - loc) / scale
    F, f = stats.t.cdf(z, df), stats.t.pdf(z, df)
    log_c = (0.5 * np.log(df) + special.betaln(0.5, df - 0.5) - np.log(df - 1) - 2 * special.betaln(0.5, df / 2))
    return scale * (z * (2 * F - 1) + 2 * f * (df + z ** 2) / (df - 1) - 2 * np.exp(log_c))


# ---------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------
def coverage(pit, level: float) -> float:
    """Share of outcomes inside the central `level` interval [q_{(1-level)/2}, q_{(1+level)/2}] of their
    forecasts, from the PIT values F(y): y is inside iff (1-level)/2 <= F(y) <= (1+level)/2
    (exact for a continuous, strictly increasing F)."""
    pit = np.asarray(pit, dtype=np.float64)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if pit.size == 0:
        return float("nan")
    a = (1 - level) / 2
    return float(((pit >= a) & (pit <= 1 - a)).mean())


def pit_histogram(pit, bins: int = 10) -> np.ndarray:
    """Share of PIT values in each of `bins` equal bins of [0, 1] (a calibrated forecast gives 1/bins each)."""
    pit = np.asarray(pit, dtype=np.float64)
    counts, _ = np.histogram(np.clip(pit, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return counts / max(pit.size, 1)


def wilson_interval(hits, n, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a hit rate hits/n: (center -/+ half) with
    center = (p + z^2/2n) / (1 + z^2/n), half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = float(special.ndtri(0.5 + confidence / 2))
    p = hits / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


# ---------------------------------------------------------------------------------------------------
# Diebold-Mariano
# ---------------------------------------------------------------------------------------------------
def newey_west_lag(n: int) -> int:
    """Rule of thumb floor(4 (n/100)^(2/9)) (Newey & West 1994)."""
    return int(math.floor(4 * (max(n, 1) / 100) ** (2 / 9)))


def newey_west_variance(d, lag: int) -> float:
    """HAC long-run variance of a series: gamma_0 + 2 sum_{k=1}^{lag} (1 - k/(lag+1)) gamma_k, with
    gamma_k = (1/n) sum_{t>k} (d_t - mean)(d_{t-k} - mean) (Bartlett weights, never negative)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    e = d - d.mean()
    var = float(e @ e) / n
    for k in range(1, min(lag, n - 1) + 1):
        var += 2 * (1 - k / (lag + 1)) * float(e[k:] @ e[:-k]) / n
    return var


@dataclass(frozen=True)
class DMResult:
    statistic: float     # mean(d) / sqrt(HAC variance / n); negative: the first forecast has the lower loss
    p_value: float       # two-sided, standard normal
    mean_difference: float
    n: int
    lag: int

    def to_dict(self) -> dict:
        return {"statistic": self.statistic, "p_value": self.p_value, "mean_difference": self.mean_difference,
                "n": self.n, "lag": self.lag}


def diebold_mariano(loss_a, loss_b, lag: int | None = None) -> DMResult:
    """Diebold-Mariano test of equal expected loss on the per-period loss difference d = loss_a - loss_b.

    Variance of the mean from Newey-West HAC with `lag` lags (default: newey_west_lag(n)); statistic
    mean(d) / sqrt(var / n), asymptotically N(0, 1) under equal loss; p-value two-sided.
    """
    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = d.size
    lag = newey_west_lag(n) if lag is None else int(lag)
    nan = float("nan")
    if n < 2:
        return DMResult(nan, nan, float(d.mean()) if n else nan, n, lag)
    mean = float(d.mean())
    var = newey_west_variance(d, lag)
    if not var > 0:
        stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return DMResult(stat, 1.0 if mean == 0 else 0.0, mean, n, lag)
    stat = mean / math.sqrt(var / n)
    return DMResult(stat, float(2 * special.ndtr(-abs(stat))), mean, n, lag)


def date_sums(d, dates) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) of the finite values of d on each date, dates in sorted order (empty where none is finite)."""
    d = np.asarray(d, dtype=np.float64)
    ok = np.isfinite(d)
    _, inverse = np.unique(np.asarray(dates)[ok], return_inverse=True)
    return np.bincount(inverse, weights=d[ok]), np.bincount(inverse).astype(np.float64)


def date_mean_diebold_mariano(d, dates, lag: int | None = None) -> DMResult:
    """DM test on the per-date means of d (a panel of asset-dates): each date weighs the same, whatever the number
    of assets on it."""
    sums, counts = date_sums(d, dates)
    means = sums / counts
    return diebold_mariano(means, np.zeros_like(means), lag)


def pooled_diebold_mariano(d, dates, lag: int | None = None) -> DMResult:
    """DM test of the mean of d over all (asset, date) pairs of a panel: the estimand of a pooled mean skill.

    The per-date sums of d divided by the mean count per date form one series whose mean is the pooled mean; its
    HAC variance across dates treats each date's assets as one cluster (their errors are correlated) and keeps
    the serial correlation. The date-mean DM (date_mean_diebold_mariano) weighs a date of one asset as much as a
    date of hundreds; the two differ where the per-date count does (weekends: crypto alone).
    """
    sums, counts = date_sums(d, dates)
    per_date = sums * sums.size / max(counts.sum(), 1.0)
    return diebold_mariano(per_date, np.zeros_like(per_date), lag)
