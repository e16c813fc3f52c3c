"""The GARCH(1,1)-t baseline logged beside each signal: its P(up) and return quantiles at the signal's horizon,
from the asset's own history up to the as-of day only, so the monitor can score model and baseline on the same
outcomes.

The fit and the simulation are the multi-horizon evaluation's (evaluate.horizon_baselines.garch_t_samples): GARCH(1,1)
with standardized Student-t errors fitted by arch on 100 x the log returns dated <= as_of, then BASELINE_SAMPLES paths
of the recursion h days ahead from the next day's variance. The h-day return is **simulated**, not read off the
analytic h-step variance: the sum of h GARCH-t returns has a random variance path (volatility clustering), so it is
neither Student-t nor Gaussian, and the analytic variance gives its second moment but not its quantiles nor P(up).
The paths are the model's own h-step distribution, and the same baseline the evaluation scores.

4,000 paths: the Monte Carlo standard error of P(up) is at most sqrt(0.25 / 4000) = 0.008, a sixth of the 0.05 margin
a signal needs above a coin flip; simulating 60 days of 4,000 paths takes about 10 ms beside the 20-100 ms fit.
Seeded per symbol (crc32, as the forecaster seeds its prompts), so re-logging a day stores the same numbers.
"""

from __future__ import annotations

import zlib

import numpy as np

BASELINE = "garch_t"
BASELINE_SAMPLES = 4000
#: the logged return quantiles (signals.return_q05 ...) and their levels
LEVELS = {"q05": 0.05, "q25": 0.25, "q75": 0.75, "q95": 0.95}
COLUMNS = ["baseline_prob_up", *[f"baseline_return_{q}" for q in LEVELS]]


def garch_baseline(returns, origins, bars, seed, n_samples: int = BASELINE_SAMPLES, refit_every: int = 1):
    """(prob_up (n_origins, H), quantiles (n_origins, H, 4) at LEVELS) of the GARCH(1,1)-t h-day log return after
    each origin (an index into `returns`: the forecast uses returns[:origin + 1] only), NaN where the asset has too
    short a past or no usable fit. refit_every=1 fits at every origin, as a daily log does; a replay of many days
    may refit less often (the evaluation's 20), the variance recursion still running over every realised return."""
    from ..evaluate.horizon_baselines import garch_t_samples

    bars = np.asarray(sorted(set(int(b) for b in bars)))
    samples, _ = garch_t_samples(returns, np.asarray(origins, dtype=np.int64), bars, n_samples, seed, refit_every)
    with np.errstate(invalid="ignore"):
        prob_up = np.where(np.isnan(samples[..., 0]), np.nan, (samples > 0).mean(axis=-1))
    quantiles = np.quantile(samples, list(LEVELS.values()), axis=-1)        # (4, n, H), NaN rows stay NaN
    return prob_up, np.moveaxis(quantiles, 0, -1)


def symbol_seed(symbol: str) -> int:
    return zlib.crc32(str(symbol).encode())


def add_baseline(table, closes: dict):
    """The signal table with the baseline's columns (BASELINE, baseline_prob_up, baseline_return_q05..q95) filled
    per row from closes[symbol]: that asset's closes dated <= the row's as_of, in date order (a forecast's own
    history). Rows whose asset has no usable fit keep NaN and the baseline name, so the log says one was tried."""
    import pandas as pd

    table = table.copy()
    for column in COLUMNS:
        table[column] = np.nan
    for symbol, rows in table.groupby("symbol", sort=False):
        close = np.asarray(closes.get(symbol, ()), dtype=np.float64)
        if len(close) < 2 or rows.as_of.nunique() != 1:
            continue
        returns = np.diff(np.log(close))
        if not np.isfinite(returns).all():
            continue
        bars = sorted(set(rows.bars.astype(int)))
        prob_up, quantiles = garch_baseline(returns, [len(returns) - 1], bars, symbol_seed(symbol))
        at = {b: k for k, b in enumerate(bars)}
        for index, b in zip(rows.index, rows.bars.astype(int)):
            table.loc[index, COLUMNS] = [prob_up[0, at[b]], *quantiles[0, at[b]]]
    table["baseline"] = pd.Series(BASELINE, index=table.index, dtype=object)
    return table
