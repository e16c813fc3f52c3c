"""Multi-horizon evaluation: forecasts from origins in a period, each scored on the h-day cumulative close return
against a random walk, GARCH(1,1)-t simulated h days ahead and a bootstrap (horizons.py, horizon_baselines.py).

Origins are every `every`-th date of the period (the union of the assets' dates, so crypto weekends count); at
each, every asset with a candle on that date is forecast as of it by the run's Forecaster (candles dated <= the
origin only), and the baselines are fitted on the same asset's returns up to the origin. One batch of paths per
origin serves all horizons: a path of max(horizons) days gives every h. The outcome of an origin near the period's
end may lie beyond the data: such rows are left out.

Cost: assets x origins x samples x max(horizons) sampled candles. The defaults (every 21 days, 100 samples) keep
a Case C test split (20 assets, ~2 years) to ~15k paths.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import MarketGPTError
from .scoring import DEFAULT_EVERY, DEFAULT_HORIZONS, DEFAULT_SAMPLES


def parse_horizons(text) -> tuple[int, ...]:
    """'1,5,21' -> (1, 5, 21): positive integers up to the forecaster's bound, sorted, unique."""
    from ..forecast import MAX_HORIZON

    try:
        values = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise MarketGPTError(f"--horizons {text!r}: expected comma-separated days, e.g. 1,5,21") from None
    if not values or values[0] < 1 or values[-1] > MAX_HORIZON:
        raise MarketGPTError(f"--horizons {text!r}: each horizon must be an integer in 1..{MAX_HORIZON}")
    return tuple(values)


def check_options(every, num_samples) -> None:
    """Checked before any work, so a typo does not cost an evaluation."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise MarketGPTError(f"--every must be a positive number of days, got {every!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 2 <= num_samples <= 10_000:
        raise MarketGPTError(f"--samples must be an integer in 2..10000 (the fair CRPS needs two), got {num_samples!r}")


def origin_dates(candles: pd.DataFrame, start, end, every: int) -> pd.DatetimeIndex:
    """Every `every`-th date of the union of the candles' dates in (start, end] (None: open)."""
    dates = pd.DatetimeIndex(sorted(candles.date.unique()))
    keep = np.ones(len(dates), dtype=bool)
    if start is not None:
        keep &= dates > pd.Timestamp(start)
    if end is not None:
        keep &= dates <= pd.Timestamp(end)
    return dates[keep][::every]


def evaluate_horizons(forecaster, candles: pd.DataFrame, categories: dict[str, str], start, end,
                      horizons=DEFAULT_HORIZONS, every: int = DEFAULT_EVERY, num_samples: int = DEFAULT_SAMPLES,
                      seed: int = 0, max_batch: int | None = None, log=print) -> tuple[dict, dict, dict]:
    """(horizons block, {symbol: GARCH info}, {"origins": n, "paths": n, "new_assets": [...]}) for origins in
    (start, end]."""
    from .horizon_baselines import baseline_samples, realised_returns
    from .horizons import long_table, score_horizon_forecasts

    check_options(every, num_samples)
    horizons = tuple(horizons)
    H = max(horizons)
    origins = origin_dates(candles, start, end, every)
    if not len(origins):
        raise MarketGPTError(f"no forecast origins between {start} and {end}")
    per_asset: dict[str, dict] = {}
    for symbol, frame in candles.groupby("symbol", sort=False):
        dates = pd.DatetimeIndex(frame.date)
        index = {d: i for i, d in enumerate(dates)}
        per_asset[str(symbol)] = {"frame": frame, "index": index, "origins": [], "model": []}
    paths = 0
    log(f"multi-horizon: {len(origins)} origins every {every} days, horizons {', '.join(map(str, horizons))}, "
        f"{num_samples} samples")
    for k, origin in enumerate(origins):
        live = [s for s, a in per_asset.items() if a["index"].get(origin, 0) >= 1]
        if not live:
            continue
        fc = forecaster.predict(candles[candles.symbol.isin(live)], H, num_samples, seed, as_of=origin,
                                max_batch=max_batch, categories=categories)
        for symbol, a in fc.assets.items():
            r = a.log_returns[:, [h - 1 for h in horizons]]                     # (S, n_h)
            per_asset[symbol]["origins"].append(origin)
            per_asset[symbol]["model"].append(r.T)
            paths += num_samples
        if (k + 1) % max(1, len(origins) // 10) == 0:
            log(f"multi-horizon: origin {k + 1}/{len(origins)} ({origin:%Y-%m-%d})")
    assets, garch = [], {}
    for i, (symbol, a) in enumerate(per_asset.items()):
        if not a["origins"]:
            continue
        close = a["frame"].close.to_numpy(dtype=np.float64)
        returns = np.log(close[1:] / close[:-1])
        t = np.array([a["index"][o] - 1 for o in a["origins"]])                # the return ending at the origin
        baselines, info = baseline_samples(returns, t, np.array(horizons), num_samples, (seed, i))
        garch[symbol] = info
        assets.append({"symbol": symbol, "category": categories.get(symbol) or "unknown",
                       "origins": np.array(a["origins"], dtype="datetime64[ns]"), "horizons": np.array(horizons),
                       "y": realised_returns(returns, t, np.array(horizons)),
                       "samples": {"model": np.stack(a["model"]), **baselines}})
    records, samples = long_table(assets)
    new = sorted(s for s in per_asset if s not in forecaster.asset_ids)
    return score_horizon_forecasts(records, samples), garch, {"origins": int(len(origins)), "paths": paths,
                                                              "new_assets": new}
