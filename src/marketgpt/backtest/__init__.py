"""Honest backtests of a run's out-of-sample signals against benchmarks and baselines, with costs.

Python: `run_backtest(source, horizon="1w", ...)` (runner.py), `oos_forecasts(run_dir, horizons, ...)` (data.py),
the engine `engine.run(weights, close, open, horizon, cost, fill)` and `metrics.summarize`.
Command line: `marketgpt backtest SOURCE --horizon 1w [...]`.

This module imports nothing heavy, so that `marketgpt --help` stays fast: the names above load on first use.
"""

from __future__ import annotations

_LAZY = {"run_backtest": "runner", "oos_forecasts": "data", "DEFAULT_SAMPLES": "data"}
DEFAULT_BENCHMARKS = "SPY,QQQ,GLD,BTC-USD"


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


def cmd_backtest(args) -> int:
    from .report import format_metrics
    from .runner import run_backtest

    benchmarks = [s.strip() for s in (args.benchmarks or "").split(",") if s.strip() and s.strip().lower() != "none"]
    results = run_backtest(args.source, args.horizon, args.long_only, args.cost_bps, args.slippage_bps,
                           args.threshold, benchmarks, args.benchmark_universe, args.provider, args.data_dir,
                           args.start, args.end, args.fill, args.weighting, args.output, args.samples, args.seed,
                           args.split, args.device)
    print(format_metrics(results))
    print(f"periods per year: {results['periods_per_year']} for the strategy ({results['calendar']}); benchmarks on "
          f"their own calendars. Deflated Sharpe over {results['trials']} configuration(s) in trials.json.")
    for note in results["notes"]:
        print(f"note: {note}")
    return 0


def add_commands(sub) -> None:
    """Register `marketgpt backtest` on the `marketgpt` parser."""
    p = sub.add_parser("backtest", help="backtest a run's out-of-sample signals with costs, against buy-and-hold "
                                        "benchmarks and baselines; metrics, report.md and plots")
    p.add_argument("source", metavar="SOURCE", help="a run directory (its test split is forecast day by day and "
                                                    "cached), or an oos.parquet / a folder holding one")
    p.add_argument("--horizon", default="1w", help="1d, 1w, 2w, 1m or 2m: the forecast horizon traded, each signal "
                                                   "held that long in daily tranches (default 1w)")
    p.add_argument("--long-only", action="store_true", help="SHORT signals become FLAT")
    p.add_argument("--cost-bps", type=float, default=5.0, help="cost per unit of turnover, bps (default 5)")
    p.add_argument("--slippage-bps", type=float, default=2.0, help="slippage per unit of turnover, bps (default 2)")
    p.add_argument("--threshold", type=float, default=0.55, help="theta of the signal rule (default 0.55)")
    p.add_argument("--weighting", default="equal", help="equal (default) or probability (weights ~ confidence - 0.5)")
    p.add_argument("--benchmarks", default=DEFAULT_BENCHMARKS,
                   help=f"comma-separated buy-and-hold benchmarks, or none (default {DEFAULT_BENCHMARKS})")
    p.add_argument("--benchmark-universe", help="universe CSV (symbol,category,...) that lists the benchmarks "
                                                "(default: a built-in table of SPY, QQQ, DIA, IWM, TLT, GLD, SLV, "
                                                "BTC-USD, ETH-USD)")
    p.add_argument("--provider", help="provider of the benchmarks' candles: yfinance (default), files:PATH, ...")
    p.add_argument("--data-dir", help="cache folder of the benchmarks (default: the run's)")
    p.add_argument("--start", help="first as-of date, YYYY-MM-DD (default: the first of the forecasts)")
    p.add_argument("--end", help="last as-of date, YYYY-MM-DD (default: the last of the forecasts)")
    p.add_argument("--fill", default="open", help="open (default): trade at the next bar's open; close: at the "
                                                  "next bar's close")
    p.add_argument("--samples", type=int, default=64, help="paths per out-of-sample forecast of a run (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the forecasts and of the random baseline")
    p.add_argument("--split", default="test", help="the run's split to forecast: test (default) or val")
    p.add_argument("--device", help="device of the forecasts: cpu, cuda (default: cuda when available)")
    p.add_argument("-o", "--output", help="output folder (default: SOURCE_FOLDER/backtest_<horizon>)")
    p.set_defaults(func=cmd_backtest)
