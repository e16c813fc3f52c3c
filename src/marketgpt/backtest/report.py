"""The backtest report: the metric table (terminal and Markdown), and PNGs of equity curves against the benchmarks on
a log scale, drawdowns, rolling one-year Sharpe ratios and the strategy's monthly returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluate.report import format_value, markdown_table
from ..signals import save_png, write_text

#: (key, label, format) of the metric table's rows
ROWS = [
    ("first", "first day", "s"), ("last", "last day", "s"), ("periods", "periods", "d"),
    ("periods_per_year", "periods per year", "d"), ("total_return", "total return", ".1%"),
    ("cagr", "CAGR", ".2%"), ("volatility", "annual volatility", ".2%"), ("sharpe", "Sharpe", ".2f"),
    ("sortino", "Sortino", ".2f"), ("max_drawdown", "max drawdown", ".1%"),
    ("max_drawdown_periods", "max drawdown duration (periods)", "d"), ("calmar", "Calmar", ".2f"),
    ("win_rate_days", "win rate per day", ".1%"), ("profit_factor_days", "profit factor per day", ".2f"),
    ("win_rate_trades", "win rate per trade", ".1%"), ("profit_factor_trades", "profit factor per trade", ".2f"),
    ("trades", "trades", "d"), ("turnover", "turnover per year", ".1f"), ("exposure", "exposure", ".2f"),
    ("hit_rate", "hit rate of the signals", ".1%"), ("psr", "probabilistic Sharpe ratio", ".3f"),
    ("dsr", "deflated Sharpe ratio", ".3f"), ("trials", "configurations tried (DSR)", "d"),
]
PLOTS = {"equity": "equity.png", "drawdowns": "drawdowns.png", "rolling_sharpe": "rolling_sharpe.png",
         "monthly_returns": "monthly_returns.png"}


def cells(results: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the metric table: one row per metric, one column per series."""
    series = results["series"]
    header = ["metric", *[s["series"] for s in series]]
    rows = [[label, *[format_value(s.get(key), fmt) for s in series]] for key, label, fmt in ROWS]
    return header, rows


def format_metrics(results: dict) -> str:
    header, rows = cells(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), *map(line, rows)])


def _lines(series: dict, values, ylabel: str, title: str, path: Path, log: bool = False) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for label, s in series.items():
        ax.plot(s.index, values(s), lw=1.6 if label == "strategy" else 0.9, label=label,
                color="black" if label == "strategy" else None)
    if log:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.autofmt_xdate()
    save_png(fig, path)


def plot_all(results: dict, series: dict, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from .metrics import drawdown

    equity = lambda s: np.cumprod(1 + s.to_numpy())
    _lines(series, equity, "equity (log scale)", "equity curves (1 at the start)", out / PLOTS["equity"], log=True)
    _lines(series, lambda s: drawdown(equity(s)), "drawdown", "drawdown from the running peak", out / PLOTS["drawdowns"])
    periods = {r["series"]: r["periods_per_year"] for r in results["series"]}

    def rolling(s):
        w = periods[s.name]
        return (s.rolling(w).mean() / s.rolling(w).std() * np.sqrt(w)).to_numpy()

    named = {k: v.rename(k) for k, v in series.items()}
    _lines(named, rolling, "Sharpe (1 year)", "rolling one-year Sharpe ratio (252 days; 365 for crypto)",
           out / PLOTS["rolling_sharpe"])
    s = series["strategy"]
    monthly = (1 + s).groupby([s.index.year, s.index.month]).prod() - 1
    grid = pd.DataFrame(np.nan, index=sorted(set(s.index.year)), columns=range(1, 13))
    for (y, m), v in monthly.items():
        grid.loc[y, m] = v
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(grid) + 1.5))
    lim = max(float(np.nanmax(np.abs(grid.to_numpy()))), 1e-4)
    ax.imshow(grid.to_numpy(), cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    for i in range(len(grid)):
        for j in range(12):
            v = grid.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:+.1%}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"])
    ax.set_yticks(range(len(grid)), grid.index)
    ax.set_title("strategy: monthly returns")
    save_png(fig, out / PLOTS["monthly_returns"])
    return dict(PLOTS)


def write_report(results: dict, series: dict, out: Path) -> dict:
    """report.md and the PNGs in `out`; returns {what: file name}."""
    for row in results["series"]:
        s = series[row["series"]]
        row["first"], row["last"] = f"{s.index[0]:%Y-%m-%d}", f"{s.index[-1]:%Y-%m-%d}"
    files = plot_all(results, series, out)
    c = results["config"]
    header, rows = cells(results)
    lines = [f"# Backtest: {c['horizon']} signals, {c['start']} to {c['end']}", "",
             f"Source: `{c['source']}`; assets: {', '.join(results['assets'])}.",
             f"Signal: LONG when P(up) >= {c['threshold']:g} and the expected return exceeds the round trip of "
             f"{2 * (c['cost_bps'] + c['slippage_bps']):g} bps; SHORT symmetrically"
             + (" (long-only: SHORT is FLAT)" if c["long_only"] else "") + f"; {c['weighting']} weights; each "
             f"signal held its horizon in daily tranches; fill at the next bar's {c['fill']}.",
             f"Costs: {c['cost_bps']:g} bps + {c['slippage_bps']:g} bps slippage per unit of turnover. Calendar of "
             f"the strategy: {results['calendar']}; each benchmark is annualised on its own calendar.",
             f"The deflated Sharpe ratio counts {results['trials']} configuration(s) tried in this folder "
             f"(trials.json).", "", markdown_table(header, rows), ""]
    if results["notes"]:
        lines += ["Notes:", *[f"- {n}" for n in results["notes"]], ""]
    lines += [f"![equity]({files['equity']})", f"![drawdowns]({files['drawdowns']})",
              f"![rolling Sharpe]({files['rolling_sharpe']})", f"![monthly returns]({files['monthly_returns']})", "",
              "## Definitions", "", *[f"- {k}: {v}" for k, v in results["definitions"].items()], ""]
    write_text(out / "report.md", "\n".join(lines))
    return {**files, "report": "report.md"}
