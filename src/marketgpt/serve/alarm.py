"""Scores of logged forecasts against their outcomes, and the sequential alarm on the loss difference to the baseline.

**What can be scored.** The log holds, per signal, the return quantiles at 5/25/75/95% (and the median) and P(up), not
the density: so CRPS is approximated by the quantile score QS = 2 x the mean pinball loss over the four levels that
model and baseline both log (CRPS is 2 x the integral of the pinball loss over all levels; four levels are a coarse
quadrature of it, the same one for both), and there is no NLL. Coverage is read off the logged intervals: the central
50% (q25..q75) and 90% (q05..q95) ones; an 80% interval would need q10 and q90, which the log does not hold. The PIT is
known only up to the bin between two logged quantiles, so it is randomized within that bin (Czado, Gneiting & Held
2009): uniform on [0, 1] exactly when the forecast's quantiles are right, so a Kolmogorov-Smirnov test applies.

**The alarm.** Each signal's loss difference e = (QS_model - QS_baseline) / IQR_baseline is divided by the baseline's
interquartile range (known at forecast time), so it has no units and does not swell with the market's volatility;
x_t is the mean of e over the signals whose outcome became known on day t. A self-starting one-sided CUSUM watches
x for an increase (the model losing ground to the baseline): each day is standardized by the median and the MAD of
the previous REFERENCE_DAYS days (no look-ahead; robust, since loss differences have heavy tails), clipped to
+-CLIP so one wild day cannot trip it alone, and S_t = max(0, S_{t-1} + z_t - DRIFT). S above WARN_AT gives WARN,
above RETRAIN_AT RETRAIN, dated the first day it crossed; an alarm latches until a new model version starts its own
stream. Horizons longer than one bar overlap day to day, so their days enter in blocks of `bars` days (block means).

Thresholds are measured (bench/monitor_alarm.py on a shared 2-core CPU: a small model on the 223 daily series of
../shared/data with candles from 2014 or earlier to 2016-10-31, one stream per asset over its test year, 2015-10-31 to
2016-10-31). Share of the unchanged streams whose CUSUM crosses h within the year: h 6: 55%, 10: 17%, 15: 5.8%,
20: 0.9%. WARN_AT = 10 and RETRAIN_AT = 15 keep false RETRAINs to about one asset-year in seventeen. The same streams with
the returns from 2016-05-02 on tripled cross 15 within 60 trading days in 4.5% of the assets, no more than the false
alarms: one asset's daily loss difference to an adapting GARCH-t is too noisy (and drifts with the market's regime,
as in the calm of July-August 2016) for this small model's loss of skill to stand out. What does show the break is
calibration: pooled over the assets, the 50% and 90% Kupiec tests of the tripled streams fail from 2016-05-08, four
trading days after it (p 1e-21 and 4e-34 over the window), hence the calibration tests raise OK to WARN (the
unchanged streams pooled fail the 50% and PIT tests too, from 2016-06-29, with p 3e-05 and 8e-06).
"""

from __future__ import annotations

import numpy as np

#: the logged levels the quantile score uses (both model and baseline log them)
LEVELS = (0.05, 0.25, 0.75, 0.95)
#: days before the alarm can trip, and the longest past it standardizes each day by
WARMUP_DAYS, REFERENCE_DAYS = 20, 250
DRIFT, CLIP = 0.5, 3.0
WARN_AT, RETRAIN_AT = 10.0, 15.0
#: the rolling window of the reported metrics and calibration tests, in outcome days
WINDOW_DAYS = 60
#: a calibration test below this p-value on the window raises OK to WARN (on the unchanged bench streams 13 of 223
#: assets got such a warning over the year)
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


def blocks(x, bars: int) -> tuple[np.ndarray, np.ndarray]:
    """(block means, index of each block's last day) of a daily series in consecutive blocks of `bars` days
    (the last, incomplete block left out until it fills); bars 1: the series itself."""
    x = np.asarray(x, dtype=np.float64)
    bars = max(1, int(bars))
    n = len(x) // bars
    ends = np.arange(n) * bars + bars - 1
    return (x[:n * bars].reshape(n, bars).mean(axis=1) if bars > 1 else x.copy()), ends


def cusum(x, warmup: int = WARMUP_DAYS, reference: int = REFERENCE_DAYS, drift: float = DRIFT,
          clip: float = CLIP) -> np.ndarray:
    """S_t of the self-starting one-sided CUSUM (see the module's docstring); 0 during the warm-up."""
    x = np.asarray(x, dtype=np.float64)
    s = np.zeros(len(x))
    level = 0.0
    for t in range(len(x)):
        if t >= warmup and np.isfinite(x[t]):
            past = x[max(0, t - reference):t]
            past = past[np.isfinite(past)]
            if len(past) >= warmup:
                centre = np.median(past)
                scale = 1.4826 * np.median(np.abs(past - centre))
                if scale > 0:
                    level = max(0.0, level + float(np.clip((x[t] - centre) / scale, -clip, clip)) - drift)
        s[t] = level
    return s


def trips(s, warn_at: float = WARN_AT, retrain_at: float = RETRAIN_AT) -> tuple[int | None, int | None]:
    """(first index above warn_at, first above retrain_at), None where it never crossed."""
    s = np.asarray(s)
    w, r = np.flatnonzero(s > warn_at), np.flatnonzero(s > retrain_at)
    return (int(w[0]) if len(w) else None), (int(r[0]) if len(r) else None)
