"""Scores of logged forecasts against their outcomes, and the sequential alarm on the loss difference to the baseline.

**What can be scored.** The log holds, per signal, the return quantiles at 5/25/75/95% (and the median) and P(up), not
the density: so CRPS is approximated by the quantile score QS = 2 x the mean pinball loss over the four levels that
model and baseline both log (CRPS is 2 x the integral of the pinball loss over all levels; four levels are a coarse
quadrature of it, the same one for both), and there is no NLL. Coverage is read off the logged intervals: the central
50% (q25..q75) and 90% (q05..q95) ones; an 80% interval would need q10 and q90, which the log does not hold. The PIT is
known only up to the bin between two logged quantiles, so it is randomized within that bin (Czado, Gneiting & Held
2009): uniform on [0, 1] exactly when the forecast's quantiles are right, so a Kolmogorov-Smirnov test applies.

**The alarm.** Each signal's loss difference e = (QS_model - QS_baseline) / IQR_baseline is divided by the baseline's
interquartile range (known at forecast time), so it has no units and does not swell with the market's volatility.
The alarm is pooled over a stream's assets (one model version and horizon): x_t is the cross-sectional mean of e over
the signals whose outcome became known on day t (pool_days: a thin day such as a weekend with only the coins joins the
next full day). One asset's daily loss difference is too noisy to detect a break: with the per-asset CUSUM this module
had before, 17% of unchanged asset-years and 18% of tripled ones crossed WARN. Each x_t is standardized by the median
and the MAD of the previous REFERENCE_DAYS days, after a WARMUP_DAYS burn-in (self-starting, past-only; robust, as
loss differences have heavy tails), clipped to +-CLIP so one wild day cannot trip it alone, and feeds three one-sided
CUSUMs, S_t = max(0, S_{t-1} + step_t):
- up, step z - DRIFT: the model loses ground to the baseline;
- down, step -z - DRIFT: the baseline loses ground to the model;
- spread, step |z| - SPREAD_DRIFT: the loss difference swings far more than it did, either way.
The last two are a regime change: with every return tripled from 2016-05-02, both forecasters miss, GARCH-t (whose
fitted persistence takes weeks to widen its intervals) more than the model conditioned on the recent candles, so the
pooled loss difference falls by about 5 robust SDs over the first days and then swings. A CUSUM above WARN_AT gives
WARN, above RETRAIN_AT RETRAIN, dated the first day it crossed; an alarm latches until a new model version starts its
own stream. Horizons longer than one bar overlap day to day, so their days enter in blocks of `bars` days.

**Calibration** (bench/monitor_alarm.py, shared 2-core CPU): the run length to the first crossing of any of the three
CUSUMs on 1,000 simulated null streams of 6,000 days after the warm-up. WARN_AT = 10: ARL >= 5,911 days on i.i.d.
Student-t(5) days (P(false WARN within 250 days) 0.003), >= 2,736 on a block bootstrap (mean block 5 days) of the real
unchanged pooled series of 223 assets (0.10) and >= 3,983 on that of SPY, QQQ and DIA (0.07): a false WARN every 11
model-years or more, against a target of no more than one per 250 trading days. RETRAIN_AT = 16: ARL >= 5,783 on all
three (P(false RETRAIN within 1,000 days) <= 0.012), against a target of 1,000. On the real walk-forward forecasts (a
small model on the 223 daily series of ../shared/data with candles from 2014 or earlier to 2016-10-31, test year
2015-10-31 to 2016-10-31), trading days counted from the break, 2016-05-02, as day 1:
- unchanged: all assets pooled stay OK (CUSUM peak 7.0), and so do SPY, QQQ and DIA pooled (6.9). 3 of 10 disjoint
  pools of 22 assets WARN during the year, all from the spread CUSUM (January 2016, and July 2016 after the Brexit
  vote; peaks 10.0 to 13.1), none RETRAIN. That is one false WARN per 3.3 model-years: the bootstrap's 5-day blocks
  miss month-long regimes.
- returns tripled from the break: all assets pooled WARN on day 4 and RETRAIN on day 7; SPY, QQQ and DIA on days 6
  and 17. The 9 pools of 22 that had not WARNed in January WARN after a median 5 days (at most 13) and RETRAIN after
  a median 8 (at most 15).
- doubled: all pooled WARN on day 7, the three indices on day 6; 7 of those 9 pools WARN (median 11 days).
- one asset alone, which is not what the thresholds are calibrated for: 35% of unchanged asset-years WARN, against
  82% of tripled ones.
"""

from __future__ import annotations

import numpy as np

#: the logged levels the quantile score uses (both model and baseline log them)
LEVELS = (0.05, 0.25, 0.75, 0.95)
#: days before the alarm can trip, and the longest past it standardizes each day by
WARMUP_DAYS, REFERENCE_DAYS = 20, 250
DRIFT, SPREAD_DRIFT, CLIP = 1.0, 1.5, 4.0
WARN_AT, RETRAIN_AT = 10.0, 16.0
#: the CUSUMs: the loss difference up (the model loses ground), down (the baseline does) and its spread |z|
SIDES = ("up", "down", "spread")
#: the rolling window of the reported metrics and calibration tests, in outcome days
WINDOW_DAYS = 60
#: a calibration test below this p-value on the window is named in the reason (a note: the status comes from the
#: CUSUMs alone)
CALIBRATION_P = 1e-3


def quantile_score(q, y) -> np.ndarray:
    """2 x mean pinball loss of the quantiles q (n, 4) at LEVELS for outcomes y (n,): CRPS's 4-level quadrature."""
    q, y = np.asarray(q, dtype=np.float64), np.asarray(y, dtype=np.float64)
    u = y[:, None] - q
    tau = np.asarray(LEVELS)
    return 2.0 * np.maximum(tau * u, (tau - 1.0) * u).mean(axis=1)


def kupiec(inside, level: float) -> float | None:
    """Kupiec's proportion-of-failures test: p-value (chi2, 1 dof) that the interval's misses have rate 1 - level."""
    from scipy.stats import chi2

    inside = np.asarray(inside, dtype=bool)
    n, x = len(inside), int((~inside).sum())
    if not n:
        return None
    p = 1.0 - level

    def loglik(rate):
        return (n - x) * np.log1p(-rate) if x == 0 else (x * np.log(rate) if x == n else
                                                          (n - x) * np.log1p(-rate) + x * np.log(rate))
    stat = max(0.0, -2.0 * (loglik(p) - loglik(x / n)))
    return float(chi2.sf(stat, 1))


def randomized_pit(quantiles, levels, y, seed: int = 0) -> np.ndarray:
    """PIT of y under forecasts known at `levels` only: uniform within the bin between the quantiles around y."""
    quantiles, y = np.asarray(quantiles, dtype=np.float64), np.asarray(y, dtype=np.float64)
    edges = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64), [1.0]])
    k = (y[:, None] > quantiles).sum(axis=1)                    # bin index 0..L
    u = np.random.default_rng(seed).random(len(y))
    return edges[k] + u * (edges[k + 1] - edges[k])


def ks_uniform(pit) -> float | None:
    from scipy.stats import kstest

    pit = np.asarray(pit, dtype=np.float64)
    return float(kstest(pit, "uniform").pvalue) if len(pit) else None


def brier(prob_up, y) -> float | None:
    prob_up, y = np.asarray(prob_up, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((prob_up - (y > 0)) ** 2)) if len(y) else None


def loss_difference(model_q, baseline_q, y) -> np.ndarray:
    """Per signal (QS_model - QS_baseline) / IQR_baseline (q columns at LEVELS: IQR = q75 - q25); NaN where the
    baseline's IQR is not positive."""
    baseline_q = np.asarray(baseline_q, dtype=np.float64)
    iqr = baseline_q[:, 2] - baseline_q[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(iqr > 0, (quantile_score(model_q, y) - quantile_score(baseline_q, y)) / iqr, np.nan)


def pool_days(e, days) -> tuple[np.ndarray, np.ndarray]:
    """(pooled days, mean of e per pooled day): the cross-sectional mean over the signals whose outcome came on a
    day. A thin day (fewer signals than half the median count of the days up to it, such as a weekend with only the
    coins) is folded into the next full day, so every pooled value averages about the same number of assets and one
    scale fits them all; thin days after the last full one wait for it. NaN values of e are left out."""
    e, days = np.asarray(e, dtype=np.float64), np.asarray(days)
    ok = np.isfinite(e)
    if not ok.any():
        return days[:0], np.zeros(0)
    unique, inverse = np.unique(days[ok], return_inverse=True)
    count = np.bincount(inverse).astype(np.float64)
    total = np.bincount(inverse, weights=e[ok])
    running = np.array([np.median(count[:i + 1]) for i in range(len(count))])
    full = np.flatnonzero(count >= 0.5 * running)
    group = np.searchsorted(full, np.arange(len(count)))
    keep = group < len(full)
    sums = np.bincount(group[keep], weights=total[keep], minlength=len(full))
    counts = np.bincount(group[keep], weights=count[keep], minlength=len(full))
    return unique[full], sums / counts


def blocks(x, bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(block means, index of each block's last day) of a daily series in consecutive blocks of `bars` days
    (the last, incomplete block left out until it fills); bars 1: the series itself."""
    x = np.asarray(x, dtype=np.float64)
    bars = max(1, int(bars))
    n = len(x) // bars
    ends = np.arange(n) * bars + bars - 1
    return (x[:n * bars].reshape(n, bars).mean(axis=1) if bars > 1 else x.copy()), ends


def cusum(x, warmup: int = WARMUP_DAYS, reference: int = REFERENCE_DAYS, drift: float = DRIFT,
          spread_drift: float = SPREAD_DRIFT, clip: float = CLIP) -> dict[str, np.ndarray]:
    """{side: S_t} of the three self-starting one-sided CUSUMs on the finite series x (see the module's docstring),
    one series per row when x is 2-D (the calibration simulates many at once); 0 during the warm-up."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1]) if x.size else np.zeros((1, 0))     # no day yet (or no full block)
    out = {side: np.zeros_like(flat) for side in SIDES}
    level = {side: np.zeros(len(flat)) for side in SIDES}
    for t in range(warmup, flat.shape[1]):
        past = flat[:, max(0, t - reference):t]
        centre = np.median(past, axis=1)
        scale = 1.4826 * np.median(np.abs(past - centre[:, None]), axis=1)
        z = np.where(scale > 0, np.clip((flat[:, t] - centre) / np.where(scale > 0, scale, 1.0), -clip, clip), 0.0)
        for side, step in (("up", z - drift), ("down", -z - drift), ("spread", np.abs(z) - spread_drift)):
            level[side] = np.maximum(0.0, level[side] + step)
            out[side][:, t] = level[side]
    return {side: s.reshape(x.shape) for side, s in out.items()}


def first_above(s, h: float) -> int | None:
    """The first index at which s is above h, None where it never is."""
    hit = np.flatnonzero(np.asarray(s) > h)
    return int(hit[0]) if len(hit) else None


def trips(s: dict, warn_at: float = WARN_AT, retrain_at: float = RETRAIN_AT) -> dict:
    """The alarm of one stream's cusum(): {"warn": (index, side) | None, "retrain": ...}, the earliest crossing
    over the sides (on a tie, the first in SIDES)."""
    out = {}
    for name, h in (("warn", warn_at), ("retrain", retrain_at)):
        hits = [(i, SIDES.index(side)) for side in SIDES if (i := first_above(s[side], h)) is not None]
        out[name] = (min(hits)[0], SIDES[min(hits)[1]]) if hits else None
    return out
