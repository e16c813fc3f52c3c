"""`marketgpt forecast`: history through the data layer, a forecast, a table, fan charts and a forecast file.

Python: `forecast_universe(run_dir, ...)` does what the command does and returns the Forecast; `fan_chart` and
`format_forecast` draw and print one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import MarketGPTError

#: horizon days shown in the terminal table (those <= the horizon, plus the horizon itself)
TABLE_DAYS = (1, 5, 21)
#: candles of history drawn left of a fan chart
CHART_HISTORY = 120
#: central bands of the close drawn on a fan chart
BANDS = (0.95, 0.8, 0.5)


def fan_chart(asset, path, history: int = CHART_HISTORY) -> Path:
    """PNG: the last `history` candles (high-low bars and open-close bodies), the median close path and the
    50/80/95% central bands of the close over the horizon, on a log price axis (bands of returns are symmetric
    there, and a wide 95% band does not flatten the candles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    hist = asset.history.tail(history)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    up = (hist.close >= hist.open).to_numpy()
    colors = np.where(up, "tab:green", "tab:red")
    ax.vlines(hist.date, hist.low, hist.high, colors=colors, lw=0.8)
    ax.vlines(hist.date, hist[["open", "close"]].min(axis=1), hist[["open", "close"]].max(axis=1), colors=colors, lw=2.5)
    dates = [asset.as_of, *asset.dates]
    close = np.concatenate([np.full((asset.close.shape[0], 1), asset.last_close), asset.close], axis=1)
    for k, level in enumerate(BANDS):
        lo, hi = np.quantile(close, [(1 - level) / 2, (1 + level) / 2], axis=0)
        ax.fill_between(dates, lo, hi, color="tab:blue", alpha=0.15 + 0.12 * k, lw=0, label=f"{level:.0%} band")
    ax.plot(dates, np.median(close, axis=0), color="tab:blue", lw=1.5, label="median")
    ax.axvline(asset.as_of, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:,.4g}")      # prices, not powers of ten
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    kind = "seen in training" if asset.known else "new to the model"
    ax.set(title=f"{asset.symbol} ({kind}): {close.shape[0]} paths, {len(asset.dates)} days from {asset.as_of:%Y-%m-%d}",
           ylabel="price (log scale)")
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def format_forecast(forecast) -> str:
    """A short table per asset: last close, the median and 10/50/90% quantiles of the close, P(up)."""
    import numpy as np

    days = sorted({d for d in TABLE_DAYS if d <= forecast.horizon} | {forecast.horizon})
    lines = []
    for a in forecast.assets.values():
        kind = "" if a.known else ", new to the model"
        lines.append(f"{a.symbol} ({a.category or 'unknown category'}{kind}): last close {a.last_close:,.4g} on "
                     f"{a.as_of:%Y-%m-%d}, {a.close.shape[0]} paths, {a.calendar} calendar")
        lines.append(f"  {'day':>4} {'date':>10} {'q10':>11} {'median':>11} {'q90':>11} {'P(up)':>6}")
        for d in days:
            q10, q50, q90 = np.quantile(a.close[:, d - 1], [0.1, 0.5, 0.9])
            lines.append(f"  {d:>4} {a.dates[d - 1]:%Y-%m-%d} {q10:>11,.4g} {q50:>11,.4g} {q90:>11,.4g} "
                         f"{a.prob_up(d):>6.3f}")
    for symbol, reason in forecast.failed.items():
        lines.append(f"{symbol}: not forecast: {reason}")
    return "\n".join(lines)


def load_histories(universe, provider: str, data_dir, log=print):
    """(candles of every asset that loads, {symbol: reason} for the others): one asset's problem stops no other."""
    import pandas as pd

    from .data import load_candles

    frames, failed = [], {}
    for i in range(len(universe)):
        row = universe.iloc[[i]].copy()
        row.attrs = universe.attrs
        try:
            frames.append(load_candles(row, provider, data_dir))
        except MarketGPTError as exc:
            failed[row.symbol.iloc[0]] = str(exc)
    return (pd.concat(frames, ignore_index=True) if frames else None), failed


def select_universe(run_dir: Path, cfg, universe: str | None, symbols: list[str] | None):
    """The universe to read history from (the run's own by default), restricted to `symbols`."""
    from .data import load_universe

    frame = load_universe(universe or cfg.data.universe)
    if symbols:
        unknown = [s for s in symbols if s not in set(frame.symbol)]
        if unknown:
            where = f"universe {universe}" if universe else f"the run's universe ({cfg.data.universe})"
            raise MarketGPTError(f"symbol(s) {', '.join(unknown)} not in {where}; give --universe CSV that lists them "
                                 f"(columns symbol,category)")
        attrs = frame.attrs
        frame = frame[frame.symbol.isin(symbols)].set_index("symbol").loc[symbols].reset_index()
        frame.attrs = attrs
    return frame


def histories_for(run_dir, cfg, symbols, universe, provider, data_dir):
    """(universe frame, candles, {symbol: reason}, provider, data dir) of the assets to forecast: the run's own
    universe, provider and cache unless given; raises when not one asset loads."""
    frame = select_universe(Path(run_dir), cfg, universe, symbols)
    if provider is None:
        provider = cfg.data.provider if universe is None else ("sample" if str(universe).lower() == "sample"
                                                               else cfg.data.provider)
    if data_dir is None:
        data_dir = cfg.data.data_dir or None
    from .data import check_provider

    check_provider(provider)   # a mistyped provider is named once, not once per asset
    if data_dir is not None and Path(data_dir).is_file():   # the same: said once, not by every asset's fetch
        raise MarketGPTError(f"{data_dir}: the data folder (--data-dir) is a file, not a folder")
    candles, failed = load_histories(frame, provider, data_dir)
    if candles is None:
        raise MarketGPTError("no asset could be loaded: " + "; ".join(f"{s}: {r}" for s, r in failed.items()))
    return frame, candles, failed, provider, data_dir


def forecast_universe(run_dir, symbols: list[str] | None = None, universe: str | None = None,
                      provider: str | None = None, data_dir=None, as_of=None, horizon: int = 21,
                      num_samples: int = 512, seed: int = 0, temperature: float | None = None,
                      top_p: float | None = None, max_batch: int | None = None, device=None, progress: bool = False):
    """Forecast assets of a universe from their cached history (the CLI's work, without printing or files).
    Assets whose history does not load are in Forecast.failed with the reason."""
    from .forecast import Forecaster

    forecaster = Forecaster.from_pretrained(run_dir, device)
    cfg = forecaster.cfg
    frame, candles, failed, provider, data_dir = histories_for(run_dir, cfg, symbols, universe, provider, data_dir)
    bar = None
    if progress:
        from tqdm import tqdm

        total = candles.symbol.nunique() * num_samples * horizon
        bar = tqdm(total=total, desc="sampling candles", unit="candle", unit_scale=True, leave=False)
    try:
        forecast = forecaster.predict(candles, horizon, num_samples, seed, temperature, as_of, top_p, max_batch,
                                      categories=dict(zip(frame.symbol, frame.category)),
                                      on_step=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    forecast.failed.update(failed)
    forecast.history = (str(universe or cfg.data.universe), provider, data_dir)   # where outcomes read closes later
    return forecast


def _symbols(text: str | None) -> list[str] | None:
    """--symbols as a list, each symbol once (a repeated one would be read twice and refused as duplicate dates)."""
    if text is None:
        return None
    out = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not out:
        raise MarketGPTError(f"--symbols {text!r}: give comma-separated symbols, e.g. --symbols SPX,GOOG")
    return out


def check_outputs(output, charts, what: str) -> tuple[Path, Path | None]:
    """The table file (.parquet, .csv or .json) and the chart folder of a command, both proven writable before
    minutes of sampling that a refused write would lose."""
    from .config import writable_dir, writable_file

    output = Path(output)
    if output.suffix.lower() not in (".parquet", ".csv", ".json"):
        raise MarketGPTError(f"-o {output}: the {what} file must end in .parquet, .csv or .json")
    writable_file(output, f"{what} file (-o)")
    return output, (writable_dir(charts, "chart folder (--charts)") if charts else None)


def cmd_forecast(args) -> int:
    from .progress import is_terminal

    output, charts = check_outputs(args.output, args.charts, "forecast")
    forecast = forecast_universe(args.run_dir, _symbols(args.symbols), args.universe, args.provider, args.data_dir,
                                 args.as_of, args.horizon, args.samples, args.seed, args.temperature, args.top_p,
                                 args.max_batch, args.device, progress=is_terminal())
    print(format_forecast(forecast))
    if not forecast.assets:
        raise MarketGPTError("no asset could be forecast (reasons above)")
    forecast.save(output)
    charts = charts or output.with_name(f"{output.stem}_charts")   # beside the file, whose folder was checked
    for a in forecast.assets.values():
        fan_chart(a, charts / f"{a.symbol}.png")
    print(f"wrote {output} ({len(forecast.assets)} assets x {forecast.horizon} days) and fan charts in {charts}/")
    for symbol in forecast.failed:
        print(f"marketgpt: {symbol} was not forecast", file=sys.stderr)
    return 1 if forecast.failed else 0


def add_history_args(p) -> None:
    """The run and the history options that every command forecasting from a run takes (forecast, signals)."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (holds best_model.pt)")
    p.add_argument("--symbols", help="comma-separated symbols (default: every asset of the universe)")
    p.add_argument("--universe", "--case", dest="universe",
                   help="universe CSV or case to read history from (default: the run's own universe)")
    p.add_argument("--provider", help="sample, yfinance, ccxt[:EXCHANGE], files:PATH (default: the run's provider)")
    p.add_argument("--data-dir", help="cache folder (default: the run's, else $MARKETGPT_DATA or ./data)")
    p.add_argument("--as-of", help="forecast from this date, YYYY-MM-DD, using candles up to it (default: each "
                                   "asset's last candle)")
    p.add_argument("--samples", type=int, default=512, help="sample paths per asset (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same paths (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")


def add_commands(sub) -> None:
    p = sub.add_parser("forecast", help="sample paths, quantiles and P(up) of assets from a trained run; a table, "
                                        "fan charts and a forecast file")
    add_history_args(p)
    p.add_argument("--horizon", type=int, default=21, help="days ahead in the asset's own calendar (default 21)")
    p.add_argument("--temperature", type=float, default=None,
                   help="divides every channel's logits as trained, in place of the run's calibrated close "
                        "temperature (default: the model's density as evaluated, calibration.json if the run has one)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: off)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="paths per forward pass, bounds memory (default: as many as a 2 GiB KV cache holds)")
    p.add_argument("-o", "--output", default="forecast.parquet",
                   help="forecast table, .parquet, .csv or .json (default forecast.parquet)")
    p.add_argument("--charts", help="folder for the fan charts (default: <output name>_charts next to the output)")
    p.set_defaults(func=cmd_forecast)
