"""What a backtest reads: out-of-sample forecasts (a run's split through `oos_forecasts`, or an `oos.parquet`), the
assets' realised candles, benchmark candles, and the (days x assets) price panels the engine runs on.

**Out-of-sample forecasts of a run.** `oos_forecasts` forecasts, as of every date of the run's test (or val) split,
every asset with a candle on that date, from its candles dated <= that date only (the slice it is given ends there;
Forecaster.predict checks the as-of again). One predict call per date serves all assets and all horizon days. The
table (Forecast.to_frame rows, plus `samples` and `seed` columns) is cached as `RUN_DIR/oos_<split>.parquet`; a
later call computes only the (date, horizon) rows the cache lacks. Each date's paths are seeded by seed + the date's
ordinal, so Monte Carlo errors of P(up) do not repeat from one day to the next.

Cost, measured on the sample run (configs/sample.json, 6 assets, test split 2012-12-03..2018-12-31 = 1,530 dates,
2 busy cores): 0.16 s per date for 64 paths of 5 days, so about 4 minutes for a one-week backtest; 42 days (2m) cost
about 8x that. Hence the default of 64 paths: the P(up) of one forecast then has a standard error of at most 0.06,
and the backtest's signals average many forecasts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MarketGPTError
from ..run import weights_file

DEFAULT_SAMPLES = 64
SPLITS = ("test", "val")
#: benchmarks the backtest knows without a --benchmark-universe: symbol -> category (for the files provider's folders)
KNOWN_BENCHMARKS = {"SPY": "indices", "QQQ": "indices", "DIA": "indices", "IWM": "indices", "TLT": "indices",
                    "GLD": "commodities", "SLV": "commodities", "BTC-USD": "crypto", "ETH-USD": "crypto"}


def _history_rows(forecaster) -> int:
    """Candles a forecast as of a date needs: the context (+1 reference, + the volume window) and the 60 days from
    which forecast.calendar_of tells a calendar."""
    tokenizer = forecaster.tokenizer
    extra = tokenizer.volume_window if tokenizer.use_volume else 0
    return max(forecaster.cfg.model.context_length + 1 + extra, 60) + 1


def oos_forecasts(run_dir, horizons, samples: int = DEFAULT_SAMPLES, every: int = 1, split: str = "test",
                  seed: int = 0, start=None, end=None, device=None, log=print) -> pd.DataFrame:
    """The long out-of-sample forecast table of a run's split for the given horizon days (see the module
    docstring), restricted to as-of dates in [start, end] when given; cached in RUN_DIR/oos_<split>.parquet."""
    from ..dataset import load_split_candles
    from ..evaluate.multi_horizon import check_options, origin_dates
    from ..forecast import Forecaster, write_table
    from ..run import check_run_dir, read_run_config

    check_options(every, samples)
    horizons = sorted({int(h) for h in horizons})
    run_dir = check_run_dir(run_dir)
    universe, candles, time_split = load_split_candles(read_run_config(run_dir).data)
    if split not in SPLITS:
        raise MarketGPTError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    lo, hi = time_split.period(split)
    dates = origin_dates(candles, lo, hi, every)
    if start is not None:
        dates = dates[dates >= start]
    if end is not None:
        dates = dates[dates <= end]
    path = run_dir / f"oos_{split}.parquet"
    cached = read_cache(path, samples, seed)
    have = set(zip(cached.as_of, cached.horizon))
    todo = [d for d in dates if any((d, h) not in have for h in horizons)]
    if todo:
        log(f"out-of-sample forecasts: {len(todo)} dates of the {split} split, horizons {horizons}, {samples} paths "
            f"(cache {path})")
        categories = dict(zip(universe.symbol, universe.category))
        forecaster = Forecaster.from_pretrained(run_dir, device)
        fresh = _forecast_dates(forecaster, candles, categories, todo, horizons, samples, seed, log)
        table = pd.concat([cached, fresh], ignore_index=True) if len(cached) else fresh
        table = table.drop_duplicates(["symbol", "as_of", "horizon"], keep="last")
        table = table.sort_values(["as_of", "symbol", "horizon"], kind="stable").reset_index(drop=True)
        write_table(table, path)
        cached = table
    keep = cached.as_of.isin(dates) & cached.horizon.isin(horizons)
    return cached[keep].reset_index(drop=True)


def read_cache(path: Path, samples: int, seed: int) -> pd.DataFrame:
    """The cached rows made with these samples and seed (none when the file is absent or was made otherwise)."""
    if not path.exists():
        return pd.DataFrame(columns=["symbol", "as_of", "horizon"])
    table = read_table(path)
    if "samples" not in table.columns or "seed" not in table.columns:
        return pd.DataFrame(columns=["symbol", "as_of", "horizon"])
    return table[(table.samples == samples) & (table.seed == seed)]


def _forecast_dates(forecaster, candles, categories, dates, horizons, samples, seed, log) -> pd.DataFrame:
    """One predict call per date over the assets with a candle on it, each given its last candles up to it."""
    keep_rows = _history_rows(forecaster)
    per_asset = {str(s): f.reset_index(drop=True) for s, f in candles.groupby("symbol", sort=False)}
    index = {s: pd.DatetimeIndex(f.date) for s, f in per_asset.items()}
    parts, step = [], max(1, len(dates) // 10)
    for k, date in enumerate(dates):
        pieces = []
        for symbol, frame in per_asset.items():
            stop = index[symbol].searchsorted(date, side="right")
            if stop >= 2 and index[symbol][stop - 1] == date:
                pieces.append(frame.iloc[max(0, stop - keep_rows):stop])
        if pieces:
            day_seed = seed + pd.Timestamp(date).toordinal()
            fc = forecaster.predict(pd.concat(pieces, ignore_index=True), max(horizons), samples, day_seed,
                                    as_of=date, categories=categories)
            rows = fc.to_frame()
            parts.append(rows[rows.horizon.isin(horizons)].assign(samples=samples, seed=seed))
        if (k + 1) % step == 0:
            log(f"out-of-sample forecasts: {k + 1}/{len(dates)} dates ({pd.Timestamp(date):%Y-%m-%d})")
    if not parts:
        return pd.DataFrame(columns=["symbol", "as_of", "horizon"])
    return pd.concat(parts, ignore_index=True)


def read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise MarketGPTError(f"{path}: unreadable forecast table ({str(exc).splitlines()[0][:200]})") from None


def resolve_source(source) -> tuple[str, Path, Path | None]:
    """('run', run dir, None) or ('table', folder with the data config, oos table path) of a backtest SOURCE."""
    path = Path(source)
    if not path.exists():
        raise MarketGPTError(f"{path}: no such run directory or oos.parquet")
    if path.is_dir() and (path / weights_file(path)).exists():
        return "run", path, None
    table = path if path.is_file() else path / "oos.parquet"
    if not table.is_file():
        raise MarketGPTError(f"{path}: no out-of-sample forecasts here (neither a run or ensemble directory "
                             f"nor an oos.parquet)")
    return "table", table.parent, table


def load_oos_table(path: Path) -> pd.DataFrame:
    table = read_table(path)
    missing = [c for c in ("symbol", "as_of", "horizon", "prob_up") if c not in table.columns]
    if missing:
        raise MarketGPTError(f"{path}: not an out-of-sample forecast table (missing {', '.join(missing)})")
    if table.empty:
        raise MarketGPTError(f"{path}: no out-of-sample forecasts (the table has no rows)")
    return table.assign(as_of=pd.to_datetime(table.as_of))


def asset_candles(folder: Path):
    """(data config, universe, candles) of the run config in `folder` (a run, or a walk-forward folder whose
    oos.parquet sits next to its config.json)."""
    from ..config import from_dict, read_json
    from ..dataset import load_split_candles

    path = folder / "config.json"
    if not path.exists():
        raise MarketGPTError(f"{folder}: no config.json next to the forecasts, so the assets' candles are unknown")
    data = from_dict(read_json(path, "run config"), str(path)).data
    universe, candles, _ = load_split_candles(data)
    return data, universe, candles


def benchmark_universe(symbols, universe_csv=None) -> pd.DataFrame:
    """The benchmarks' universe rows: from --benchmark-universe, or the built-in table; an unknown one is an error."""
    from ..data import load_universe

    if universe_csv:
        frame = load_universe(universe_csv)
        known, where = set(frame.symbol), f"benchmark universe {universe_csv}"
    else:
        frame = pd.DataFrame({"symbol": list(KNOWN_BENCHMARKS), "category": list(KNOWN_BENCHMARKS.values())})
        frame = frame.assign(name="", yfinance=frame.symbol, ccxt="")
        frame.attrs["universe"] = "BENCHMARKS.csv"
        known, where = set(KNOWN_BENCHMARKS), f"the known benchmarks ({', '.join(KNOWN_BENCHMARKS)})"
    unknown = [s for s in symbols if s not in known]
    if unknown:
        raise MarketGPTError(f"unknown benchmark {', '.join(unknown)}: not in {where}; give --benchmark-universe CSV "
                             f"(symbol,category) that lists it")
    attrs = frame.attrs
    frame = frame.set_index("symbol").loc[list(symbols)].reset_index()
    frame.attrs = attrs
    return frame


def panel(candles: pd.DataFrame, symbols, dates: pd.DatetimeIndex, column: str) -> np.ndarray:
    """(len(dates), len(symbols)) of one price column, NaN where an asset has no candle."""
    wide = candles.pivot_table(index="date", columns="symbol", values=column, aggfunc="last")
    return wide.reindex(index=dates, columns=list(symbols)).to_numpy(np.float64)
