"""LONG / SHORT / FLAT signals per asset and horizon from a forecast, multi-horizon band charts, `marketgpt signals`.

**Horizons** are named 1d, 1w, 2w, 1m, 2m and counted in the asset's own bars: 1, 5, 10, 21, 42 trading days on a
business-day calendar, 1, 7, 14, 30, 60 calendar days on a daily one (crypto), so "1w" is a week on both.

**The rule.** With p = P(C_{t+h} > C_t) and E = the expected simple return E[C_{t+h} / C_t] - 1 read off the
forecast's sample paths, and a round-trip cost c = 2 x (cost + slippage) (bps / 10^4):
- LONG when p >= theta and E > c;
- SHORT when p <= 1 - theta and E < -c;
- FLAT otherwise.
The confidence of a signal is max(p, 1 - p): the forecast's probability of its more likely direction (for a FLAT
call, the side that did not clear theta or the cost). The probability and the mean must agree, because a trade can
be likely to win and still lose money on average (a skewed distribution), or win on average only through a tail.

theta defaults to 0.55: five points above a coin flip, which is more than twice the largest Monte Carlo standard
error of p at the default 512 paths (sqrt(0.25 / 512) = 0.022), so a signal is not sampling noise of the forecast
itself. (At the backtest's 64 paths that error is 0.0625: theta 0.55 there filters less of it; say so in reports.)

Python: `signal_table(forecast.to_frame(), calendars, ...)` works on any long forecast table (a Forecast's, or an
out-of-sample `oos.parquet`); `decide` is the rule on arrays, which the backtest shares.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import MarketGPTError

HORIZON_NAMES = ("1d", "1w", "2w", "1m", "2m")
#: bars of each horizon name on a calendar (see forecast.calendar_of)
HORIZON_BARS = {"business": (1, 5, 10, 21, 42), "daily": (1, 7, 14, 30, 60)}
DEFAULT_THRESHOLD = 0.55
#: the price quantiles a signal row carries (with the median return)
LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
LONG, FLAT, SHORT = 1, 0, -1
SIGNAL_NAMES = {LONG: "LONG", FLAT: "FLAT", SHORT: "SHORT"}
#: Bollinger band of the history on the charts: 20-day mean +- 2 standard deviations of the close
BOLLINGER_DAYS, BOLLINGER_WIDTH = 20, 2.0
CHART_HISTORY = 120


def horizon_bars(name: str, calendar: str) -> int:
    """Bars of a horizon name on an asset's calendar: horizon_bars("1w", "daily") == 7."""
    return HORIZON_BARS[calendar][HORIZON_NAMES.index(name)]


def parse_horizon_names(text) -> tuple[str, ...]:
    """'1d,1w' -> ('1d', '1w'), in the order of HORIZON_NAMES, each once."""
    names = {x.strip().lower() for x in str(text).split(",") if x.strip()}
    unknown = sorted(names - set(HORIZON_NAMES))
    if unknown or not names:
        raise MarketGPTError(f"horizon {', '.join(unknown) or repr(text)} unknown: use {', '.join(HORIZON_NAMES)} "
                             f"(1/5/10/21/42 trading days, 1/7/14/30/60 days for crypto)")
    return tuple(n for n in HORIZON_NAMES if n in names)


def check_costs(threshold: float, cost_bps: float, slippage_bps: float) -> float:
    """The round-trip cost as a fraction, after checking the three numbers a user types."""
    import math

    if not (isinstance(threshold, (int, float)) and 0.5 <= threshold < 1):
        raise MarketGPTError(f"--threshold must be in [0.5, 1): P(up) at or above it is LONG, at or below 1 - it "
                             f"SHORT; got {threshold!r}")
    for name, value in (("--cost-bps", cost_bps), ("--slippage-bps", slippage_bps)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 10_000):
            raise MarketGPTError(f"{name} must be a number of basis points in [0, 10000), got {value!r}")
    return 2 * (cost_bps + slippage_bps) / 1e4


def decide(prob_up, expected_return, threshold: float = DEFAULT_THRESHOLD, round_trip: float = 0.0):
    """(signal, confidence) arrays: the module's rule on arrays of P(up) and expected simple return."""
    import numpy as np

    p = np.asarray(prob_up, dtype=np.float64)
    e = np.asarray(expected_return, dtype=np.float64)
    signal = np.where((p >= threshold) & (e > round_trip), LONG,
                      np.where((1 - p >= threshold) & (e < -round_trip), SHORT, FLAT))
    return signal.astype(np.int8), np.maximum(p, 1 - p)


def expected_simple_return(table):
    """E[C_{t+h}] / C_t - 1 from the table's `mean` close and `last_close`; a table with only the mean log return
    gets exp(mean_return) - 1, which is lower by Jensen's inequality (a stricter LONG, a looser SHORT)."""
    import numpy as np

    if {"mean", "last_close"} <= set(table.columns):
        return table["mean"].to_numpy(np.float64) / table["last_close"].to_numpy(np.float64) - 1
    if "mean_return" in table.columns:
        return np.expm1(table["mean_return"].to_numpy(np.float64))
    raise MarketGPTError("forecast table: needs mean and last_close, or mean_return, to know the expected return")


def signal_table(table, calendars: dict, names=HORIZON_NAMES, threshold: float = DEFAULT_THRESHOLD,
                 cost_bps: float = 5.0, slippage_bps: float = 2.0):
    """Signal rows of a long forecast table (symbol, as_of, horizon in days, prob_up, mean/last_close or
    mean_return, quantiles) for the named horizons: each symbol's rows at its calendar's bars (calendars:
    {symbol: 'business' | 'daily'}). Raises when the table lacks a horizon a symbol needs."""
    import numpy as np
    import pandas as pd

    round_trip = check_costs(threshold, cost_bps, slippage_bps)
    missing = [c for c in ("symbol", "as_of", "horizon", "prob_up") if c not in table.columns]
    if missing:
        raise MarketGPTError(f"forecast table: missing column(s) {', '.join(missing)}")
    parts = []
    for name in names:
        bars = table.symbol.map(lambda s, name=name: horizon_bars(name, calendars.get(s, "business")))
        rows = table[table.horizon.to_numpy() == bars.to_numpy()]
        lacking = sorted(set(table.symbol) - set(rows.symbol))
        if lacking:
            have = sorted(int(h) for h in table[table.symbol == lacking[0]].horizon.unique())
            which = ", ".join(f"{s} ({horizon_bars(name, calendars.get(s, 'business'))} bars)" for s in lacking[:5])
            raise MarketGPTError(f"the forecasts have no {name} horizon for {which}: they hold {_days(have)}")
        parts.append(rows.assign(horizon_name=name))
    rows = pd.concat(parts, ignore_index=True)
    signal, confidence = decide(rows.prob_up, expected_simple_return(rows), threshold, round_trip)
    out = pd.DataFrame({"symbol": rows.symbol, "as_of": rows.as_of, "horizon": rows.horizon_name,
                        "bars": rows.horizon.astype(int)})
    for column in ("date", "model", "last_close"):
        if column in rows.columns:
            out[column] = rows[column].to_numpy()
    out["prob_up"] = rows.prob_up.to_numpy()
    out["expected_return"] = expected_simple_return(rows)
    for column, source in (("mean_log_return", "mean_return"), ("median_log_return", "return_q50")):
        out[column] = rows[source].to_numpy() if source in rows.columns else np.nan
    for kind in ("close", "return"):
        for q in ("q05", "q25", "q75", "q95"):
            if f"{kind}_{q}" in rows.columns:
                out[f"{kind}_{q}"] = rows[f"{kind}_{q}"].to_numpy()
    out["signal"] = pd.Categorical([SIGNAL_NAMES[s] for s in signal], categories=["LONG", "FLAT", "SHORT"])
    out["confidence"] = confidence
    return out.sort_values(["symbol", "as_of", "bars"], kind="stable").reset_index(drop=True)


def _days(values) -> str:
    if not values:
        return "no rows"
    return f"days {values[0]}..{values[-1]}" if values == list(range(values[0], values[-1] + 1)) else \
        "days " + ",".join(map(str, values))


def write_text(path, text: str) -> Path:
    """A text file written atomically (temp file in the same folder + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MarketGPTError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def bands_chart(asset, rows, path, history: int = CHART_HISTORY) -> Path:
    """PNG of one asset: the last `history` closes with their Bollinger band (20-day mean +- 2 sigma), and at each
    horizon's date the forecast's 5-95% and 25-75% close bands and median, joined from the as-of close, labelled
    with the horizon's signal. Log price axis, as on the fan charts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    hist = asset.history.tail(history + BOLLINGER_DAYS - 1)
    mid = hist.close.rolling(BOLLINGER_DAYS).mean()
    sd = hist.close.rolling(BOLLINGER_DAYS).std(ddof=0)
    hist, mid, sd = hist.tail(history), mid.tail(history), sd.tail(history)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(hist.date, hist.close, color="black", lw=1, label="close")
    ax.fill_between(hist.date, mid - BOLLINGER_WIDTH * sd, mid + BOLLINGER_WIDTH * sd, color="tab:orange",
                    alpha=0.2, lw=0, label=f"Bollinger {BOLLINGER_DAYS}d, {BOLLINGER_WIDTH:g} sigma")
    ax.plot(hist.date, mid, color="tab:orange", lw=0.8)
    rows = rows.sort_values("bars")
    close = asset.close
    dates = [asset.as_of, *[asset.dates[b - 1] for b in rows.bars]]
    q = np.array([[asset.last_close] * 5] + [np.quantile(close[:, b - 1], LEVELS) for b in rows.bars])
    ax.fill_between(dates, q[:, 0], q[:, 4], color="tab:blue", alpha=0.15, lw=0, label="forecast 5-95%")
    ax.fill_between(dates, q[:, 1], q[:, 3], color="tab:blue", alpha=0.3, lw=0, label="forecast 25-75%")
    ax.plot(dates, q[:, 2], color="tab:blue", marker="o", ms=3, lw=1.2, label="forecast median")
    colors = {"LONG": "tab:green", "SHORT": "tab:red", "FLAT": "grey"}
    for k, row in enumerate(rows.itertuples(), 1):
        ax.vlines(dates[k], q[k, 0], q[k, 4], color=colors[row.signal], lw=2)
        ax.annotate(f"{row.horizon} {row.signal}\n{row.prob_up:.2f}", (dates[k], q[k, 4]), fontsize=7,
                    ha="center", va="bottom", color=colors[row.signal])
    ax.axvline(asset.as_of, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda v, _: f"{v:,.4g}"))          # prices, not powers of ten
    ax.set(title=f"{asset.symbol}: forecast bands from {asset.as_of:%Y-%m-%d} ({close.shape[0]} paths) and P(up)",
           ylabel="price (log scale)")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return save_png(fig, path)


def save_png(fig, path) -> Path:
    """A matplotlib figure as a PNG, atomically (temp file + rename), and closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def format_signals(table) -> str:
    head = (f"{'symbol':<10} {'as of':>10} {'hor':>3} {'bars':>4} {'P(up)':>6} {'E[ret]':>8} {'q05':>10} "
            f"{'q95':>10} {'signal':>6} {'conf':>5}")
    lines = [head]
    for r in table.itertuples():
        lines.append(f"{r.symbol:<10} {r.as_of:%Y-%m-%d} {r.horizon:>3} {r.bars:>4} {r.prob_up:>6.3f} "
                     f"{r.expected_return:>+8.2%} {r.close_q05:>10,.4g} {r.close_q95:>10,.4g} {r.signal:>6} "
                     f"{r.confidence:>5.2f}")
    return "\n".join(lines)


def compute_signals(run_dir, symbols=None, universe=None, provider=None, data_dir=None, as_of=None,
                    names=HORIZON_NAMES, samples: int = 512, seed: int = 0, threshold: float = DEFAULT_THRESHOLD,
                    cost_bps: float = 5.0, slippage_bps: float = 2.0, device=None, progress: bool = False,
                    baseline: bool = True):
    """(signal table, forecast) of a run's assets as of a day: what `marketgpt signals` computes, from Python.
    With `baseline`, each row also carries the GARCH(1,1)-t baseline of its asset and horizon, fitted on the history
    the forecast used (dated <= as_of; serve.baseline), which the signal log stores beside it for the monitor."""
    from .forecast_cli import forecast_universe

    # the longest horizon on either calendar, since an asset's calendar is known only from its history
    horizon = max(horizon_bars(names[-1], c) for c in HORIZON_BARS)
    forecast = forecast_universe(run_dir, symbols, universe, provider, data_dir, as_of, horizon, samples, seed,
                                 progress=progress, device=device)
    if not forecast.assets:
        raise MarketGPTError("no asset could be forecast: " + "; ".join(f"{s}: {r}" for s, r in forecast.failed.items()))
    calendars = {s: a.calendar for s, a in forecast.assets.items()}
    table = signal_table(forecast.to_frame(LEVELS), calendars, names, threshold, cost_bps, slippage_bps)
    if baseline:
        from .serve.baseline import add_baseline

        table = add_baseline(table, {s: a.history.close.to_numpy() for s, a in forecast.assets.items()})
    return table, forecast


def cmd_signals(args) -> int:
    from .forecast import write_table
    from .forecast_cli import _symbols, check_outputs
    from .progress import is_terminal

    names = parse_horizon_names(args.horizons)
    check_costs(args.threshold, args.cost_bps, args.slippage_bps)
    output, charts = check_outputs(args.output, args.charts, "signal")
    engine = None
    if args.log:   # opened first: a bad --db fails before minutes of sampling
        from .serve.db import open_db

        engine = open_db(args.db, args.data_dir)
    table, forecast = compute_signals(args.run_dir, _symbols(args.symbols), args.universe, args.provider,
                                      args.data_dir, args.as_of, names, args.samples, args.seed, args.threshold,
                                      args.cost_bps, args.slippage_bps, args.device, is_terminal())
    print(format_signals(table))
    write_table(table, output)
    print(f"wrote {output} ({len(forecast.assets)} assets x {len(names)} horizons; LONG when P(up) >= "
          f"{args.threshold:g} and E[return] > {2 * (args.cost_bps + args.slippage_bps):g} bps round trip)")
    if charts is not None:
        for symbol, a in forecast.assets.items():
            bands_chart(a, table[table.symbol == symbol], charts / f"{symbol}.png")
        print(f"band charts in {charts}/")
    if engine is not None:
        from .serve.log import log_signals

        universe, provider, data_dir = forecast.history
        run_id = log_signals(table, args.run_dir, universe, provider, data_dir, as_of=args.as_of, engine=engine)
        print(f"logged {len(table)} signals as forecast run {run_id} in {engine.url.render_as_string()}")
    for symbol, reason in forecast.failed.items():
        print(f"marketgpt: {symbol} was not forecast: {reason}", file=sys.stderr)
    return 1 if forecast.failed else 0


def add_commands(sub) -> None:
    from .forecast_cli import add_history_args

    p = sub.add_parser("signals", help="LONG/SHORT/FLAT per asset and horizon from a run's forecast, with P(up), "
                                       "expected return, price quantiles and band charts")
    add_history_args(p)
    p.add_argument("--horizons", default=",".join(HORIZON_NAMES),
                   help="horizon names, default 1d,1w,2w,1m,2m (5/10/21/42 trading days; 7/14/30/60 days for crypto)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"theta: LONG needs P(up) >= theta, SHORT P(up) <= 1 - theta (default {DEFAULT_THRESHOLD})")
    p.add_argument("--cost-bps", type=float, default=5.0, help="cost per trade, basis points (default 5)")
    p.add_argument("--slippage-bps", type=float, default=2.0, help="slippage per trade, basis points (default 2)")
    p.add_argument("-o", "--output", default="signals.parquet", help="signal table, .parquet, .csv or .json")
    p.add_argument("--charts", help="folder for one band chart per asset (default: none)")
    p.add_argument("--log", action="store_true", help="record the signals in the signal log (see --db)")
    p.add_argument("--db", help="signal log URL (default: sqlite:///<data-dir>/marketgpt.db; "
                                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)")
    p.set_defaults(func=cmd_signals)
