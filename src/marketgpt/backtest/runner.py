"""One backtest session: out-of-sample forecasts -> signals -> the strategy, its baselines and the benchmarks through
the same engine -> metrics, the trial ledger, the report.

**Strategy.** The forecast as of day t for the chosen horizon (h bars of each asset's calendar) gives a signal by
signals.decide; each day's tranche is shared equally by the assets with a LONG or SHORT signal (or in proportion to
confidence - 0.5 with weighting "probability") and held h bars (engine.py). --long-only turns SHORT into FLAT.

**Baselines**, on the same assets, days (those with a forecast), horizon, tranches, fill and costs:
- always long: LONG on every asset with a forecast;
- momentum 12-1: the sign of the return from a year (252 bars; 365 for crypto) to a month (21; 30) before t;
- random: each asset's strategy signals rotated in time by a random offset: the same signals, turnover and
  exposure, at times that know nothing of the returns (engine.random_signal).

**Benchmarks**: buy and hold of each (SPY, QQQ, GLD, BTC-USD by default), bought at the first fill of the period
with the same costs, each on its own calendar over the strategy's period; one whose candles do not load is named
and skipped.

**Trials.** Every configuration of the strategy run into one output folder is a trial, recorded in
`trials.json` there (a configuration is the source, horizon, long-only, costs, threshold, fill, weighting, period,
samples, seed and split: rerunning the same one replaces its entry). The deflated Sharpe ratio is computed with
N = the number of entries and the variance of their Sharpe ratios (metrics.dsr).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MarketGPTError
from ..evaluate.scoring import json_safe
from . import DEFAULT_BENCHMARKS, engine
from .data import (
    DEFAULT_SAMPLES,
    asset_candles,
    benchmark_universe,
    load_oos_table,
    oos_forecasts,
    panel,
    resolve_source,
)
from .metrics import DEFINITIONS, PERIODS, dsr, sharpe, summarize

WEIGHTINGS = ("equal", "probability")
MONTH = {"business": 21, "daily": 30}


def check_options(horizon, fill, weighting, threshold, cost_bps, slippage_bps, start, end):
    from ..evaluate.sources import parse_date
    from ..signals import check_costs, parse_horizon_names

    names = parse_horizon_names(horizon)
    if len(names) != 1:
        raise MarketGPTError(f"--horizon {horizon!r}: give one horizon (a backtest holds one), e.g. --horizon 1w")
    if fill not in engine.FILLS:
        raise MarketGPTError(f"--fill must be one of {', '.join(engine.FILLS)}, got {fill!r}")
    if weighting not in WEIGHTINGS:
        raise MarketGPTError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    check_costs(threshold, cost_bps, slippage_bps)
    start, end = parse_date(start, "--start"), parse_date(end, "--end")
    if start is not None and end is not None and end <= start:
        raise MarketGPTError(f"--end {end:%Y-%m-%d} must come after --start {start:%Y-%m-%d}")
    return names[0], start, end


def run_backtest(source, horizon: str = "1w", long_only: bool = False, cost_bps: float = 5.0,
                 slippage_bps: float = 2.0, threshold: float = 0.55, benchmarks=None,
                 benchmark_universe_csv=None, provider=None, data_dir=None, start=None, end=None, fill: str = "open",
                 weighting: str = "equal", out_dir=None, samples: int = DEFAULT_SAMPLES, seed: int = 0,
                 split: str = "test", device=None, log=print) -> dict:
    """Backtest SOURCE (a run directory, or an oos.parquet / a folder holding one next to its config.json): see the
    module docstring; benchmarks None: the default ones, () none. Writes report.md, metrics.json, daily.parquet,
    signals.parquet, the PNGs and trials.json to out_dir (default SOURCE_FOLDER/backtest_<horizon>) and returns the
    results dict."""
    from ..forecast import calendar_of, write_table
    from ..forecast_cli import load_histories
    from ..signals import horizon_bars, signal_table, write_text
    from .report import write_report

    started = time.time()
    benchmarks = DEFAULT_BENCHMARKS.split(",") if benchmarks is None else benchmarks
    name, start, end = check_options(horizon, fill, weighting, threshold, cost_bps, slippage_bps, start, end)
    bench_frame = benchmark_universe(list(benchmarks), benchmark_universe_csv) if benchmarks else None
    kind, folder, table_path = resolve_source(source)
    out = Path(out_dir) if out_dir else folder / f"backtest_{name}"
    try:                     # before the forecasts: an unwritable folder should not cost them
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MarketGPTError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    data_cfg, universe, candles = asset_candles(folder)
    categories = dict(zip(universe.symbol, universe.category))
    calendars = {str(s): calendar_of(f.date, categories.get(s)) for s, f in candles.groupby("symbol", sort=False)}
    if kind == "run":
        bars = {horizon_bars(name, c) for c in set(calendars.values())}
        table = oos_forecasts(folder, bars, samples, 1, split, seed, start, end, device, log)
        where = f"the {split} split of {folder}" + (" between --start and --end" if start or end else "")
    else:
        table = load_oos_table(table_path)
        table = table[(table.as_of >= (start or table.as_of.min())) & (table.as_of <= (end or table.as_of.max()))]
        where = str(table_path)
    if table.empty:
        raise MarketGPTError(f"no out-of-sample forecasts in {where}")
    unpriced = sorted(set(table.symbol) - set(calendars))
    table = table[table.symbol.isin(calendars)]
    signals = signal_table(table, calendars, (name,), threshold, cost_bps, slippage_bps)
    symbols = sorted(signals.symbol.unique())
    first, last = signals.as_of.min(), signals.as_of.max()
    if first == last:
        raise MarketGPTError(f"the forecasts of {where} span one day ({first:%Y-%m-%d}): a backtest needs two")
    cost = (cost_bps + slippage_bps) / 1e4
    cal = [calendars[s] for s in symbols]
    h = np.array([horizon_bars(name, c) for c in cal])
    dates, close, open_, panels, forward = _panels(signals, candles, symbols, cal, h, long_only, weighting, seed)
    periods = max(PERIODS[c] for c in cal)
    series, table_rows = {}, []
    for label, (sig, strength) in panels.items():
        result = engine.run(engine.equal_weights(sig, strength), close, open_, h, cost, fill)
        row = {"series": label, "kind": "strategy" if label == "strategy" else "baseline",
               **summarize(result.returns, periods, result.exposure, result.turnover, result.trades),
               "hit_rate": hit_rate(sig, forward)}
        series[label] = pd.Series(result.returns, index=dates)
        table_rows.append(row)
    notes = [f"forecasts of {', '.join(unpriced)} have no candles in the run's universe and are left out"] \
        if unpriced else []
    if bench_frame is not None:
        table_rows += _benchmarks(bench_frame, provider or "yfinance", data_dir or data_cfg.data_dir or None, first,
                                  last, cost, fill, series, notes, load_histories, calendar_of)
    config = {"source": str(Path(source).resolve()), "horizon": name, "long_only": long_only, "cost_bps": cost_bps,
              "slippage_bps": slippage_bps, "threshold": threshold, "fill": fill, "weighting": weighting,
              "start": f"{first:%Y-%m-%d}", "end": f"{last:%Y-%m-%d}", "samples": samples, "seed": seed,
              "split": split}
    trials = record_trial(out / "trials.json", config, sharpe(series["strategy"].to_numpy()), len(dates))
    table_rows[0]["dsr"] = dsr(series["strategy"].to_numpy(), [t["sharpe_per_period"] for t in trials])
    table_rows[0]["trials"] = len(trials)
    results = {"config": config, "periods_per_year": periods,
               "calendar": "every day (crypto), 365 periods a year" if periods == 365 else
               "business days, 252 periods a year",
               "cost_per_turnover": cost, "assets": symbols, "horizon_bars": dict(zip(symbols, map(int, h))),
               "series": table_rows, "notes": notes, "definitions": DEFINITIONS, "trials": len(trials),
               "seconds": None}
    write_table(signals, out / "signals.parquet")
    write_table(daily_frame(series), out / "daily.parquet")
    results["files"] = write_report(results, series, out)
    results["seconds"] = round(time.time() - started, 2)
    write_text(out / "metrics.json", json.dumps(json_safe(results), indent=1))
    log(f"wrote {out / 'report.md'} and metrics.json, daily.parquet, signals.parquet, trials.json in {out}/")
    return results


def _panels(signals, candles, symbols, cal, h, long_only, weighting, seed):
    """(dates, close, open, {series: (signal panel, strength)}, realised h-bar returns) over the forecasts'
    period. Momentum and the realised returns are computed on the whole history, then cut to the period."""
    own = candles[candles.symbol.isin(symbols)]
    all_dates = pd.DatetimeIndex(sorted(own.date.unique()))
    full_close = panel(own, symbols, all_dates, "close")
    full_bars = engine.Bars(np.isfinite(full_close))
    momentum = engine.momentum_signal(full_close, full_bars, np.array([PERIODS[c] for c in cal]),
                                      np.array([MONTH[c] for c in cal]))
    with np.errstate(invalid="ignore", divide="ignore"):
        forward = full_bars.shift(full_close, -h, np.nan) / full_close - 1
    rows = (all_dates >= signals.as_of.min()) & (all_dates <= signals.as_of.max())
    dates = all_dates[rows]
    signal, confidence = np.full((len(dates), len(symbols)), np.nan), np.full((len(dates), len(symbols)), np.nan)
    at = (dates.get_indexer(signals.as_of), pd.Index(symbols).get_indexer(signals.symbol))
    signal[at] = signals.signal.map({"LONG": 1, "FLAT": 0, "SHORT": -1}).to_numpy(np.float64)
    confidence[at] = signals.confidence.to_numpy()
    if long_only:
        signal = np.where(signal < 0, 0.0, signal)
    known, trend = np.isfinite(signal), momentum[rows]
    panels = {
        "strategy": (signal, confidence - 0.5 if weighting == "probability" else None),
        "always long": (np.where(known, 1.0, np.nan), None),
        "momentum 12-1": (np.where(known, np.maximum(trend, 0) if long_only else trend, np.nan), None),
        "random": (engine.random_signal(signal, seed), None),
    }
    return dates, full_close[rows], panel(own, symbols, dates, "open"), panels, forward[rows]


def hit_rate(signal: np.ndarray, forward: np.ndarray) -> float:
    """Share of the LONG/SHORT signals whose sign matches the realised h-bar return (known outcomes only)."""
    called = np.isfinite(signal) & (signal != 0) & np.isfinite(forward)
    return float((np.sign(forward[called]) == signal[called]).mean()) if called.any() else float("nan")


def _benchmarks(frame, provider, data_dir, first, last, cost, fill, series, notes, load_histories, calendar_of):
    """Buy and hold of each benchmark over [first, last] on its own calendar (rows for the metric table)."""
    candles, failed = load_histories(frame, provider, data_dir)
    for symbol, reason in failed.items():
        notes.append(f"benchmark {symbol} skipped: {reason}")
    rows, outside = [], []
    for symbol in frame.symbol:
        if symbol in failed:
            continue
        own = candles[(candles.symbol == symbol) & (candles.date >= first) & (candles.date <= last)]
        if len(own) < 2:
            outside.append(symbol)
            continue
        dates = pd.DatetimeIndex(own.date)
        close, open_ = own[["close"]].to_numpy(np.float64), own[["open"]].to_numpy(np.float64)
        result = engine.run(np.ones_like(close), close, open_, 1, cost, fill)
        category = frame.set_index("symbol").category.get(symbol)
        periods = PERIODS[calendar_of(candles[candles.symbol == symbol].date, category)]
        series[symbol] = pd.Series(result.returns, index=dates)
        rows.append({"series": symbol, "kind": "benchmark",
                     **summarize(result.returns, periods, result.exposure, result.turnover, result.trades)})
    if outside and not rows:
        span = f"{first:%Y-%m-%d}..{last:%Y-%m-%d}"
        raise MarketGPTError(f"no dates shared by the strategy ({span}) and the benchmark(s) {', '.join(outside)}; "
                             f"choose benchmarks with candles in that period, or --benchmarks none")
    for symbol in outside:
        notes.append(f"benchmark {symbol} skipped: no candles between {first:%Y-%m-%d} and {last:%Y-%m-%d}")
    return rows


def record_trial(path: Path, config: dict, sharpe_per_period: float, periods: int) -> list[dict]:
    """Add (or replace) this configuration in the folder's trial ledger; returns every trial."""
    from ..config import read_json
    from ..signals import write_text

    trials = read_json(path, "trial ledger").get("trials", []) if path.exists() else []
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    trials = [t for t in trials if t.get("id") != key]
    trials.append({"id": key, "config": config, "sharpe_per_period": sharpe_per_period, "periods": periods,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_text(path, json.dumps(json_safe({"about": "every strategy configuration backtested into this folder; the "
                                                    "deflated Sharpe ratio counts them", "trials": trials}), indent=1))
    return trials


def daily_frame(series: dict) -> pd.DataFrame:
    """Long frame of every series: date, series, return, equity."""
    parts = [pd.DataFrame({"date": s.index, "series": label, "return": s.to_numpy(),
                           "equity": np.cumprod(1 + s.to_numpy())}) for label, s in series.items()]
    return pd.concat(parts, ignore_index=True)
