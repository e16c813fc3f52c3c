"""Realised outcomes of logged signals, read from the data layer once each signal's horizon has passed.

A signal for as_of t at h bars is realised at the h-th bar of the asset's own history after the last candle dated
<= t (trading days for stocks, calendar days for crypto, as the horizon was counted when it was forecast). Until
that candle is in the cache the signal stays pending, so an outcome never uses a close the data does not yet hold.
Filling is idempotent: signals that already have an outcome are not read again.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from .db import ForecastRun, Outcome, Signal, open_db, session


@dataclass
class OutcomeReport:
    filled: int
    pending: int
    failed: dict[str, str]


def realised(dates, close, as_of, bars: int):
    """(date, close, simple return, log return) h bars after as_of, or None while that bar is not in the data."""
    import numpy as np
    import pandas as pd

    start = int(np.searchsorted(dates, np.datetime64(pd.Timestamp(as_of)), side="right")) - 1
    end = start + int(bars)
    if start < 0 or end >= len(dates):
        return None
    base, value = float(close[start]), float(close[end])
    return pd.Timestamp(dates[end]).date(), value, value / base - 1.0, float(np.log(value / base))


def closes_of(universe: str, symbols: list[str], provider: str, data_dir):
    """({symbol: (dates, closes)} of the symbols that load, {symbol: reason} for the others)."""
    import pandas as pd

    from ..data import load_universe
    from ..forecast_cli import load_histories

    frame = load_universe(universe)
    attrs = frame.attrs
    frame = frame[frame.symbol.isin(symbols)].reset_index(drop=True)
    frame.attrs = attrs
    failed = {s: f"not in universe {universe}" for s in symbols if s not in set(frame.symbol)}
    candles, more = load_histories(frame, provider, data_dir) if len(frame) else (None, {})
    failed.update(more)
    out = {}
    if candles is not None:
        for symbol, rows in candles.groupby("symbol", sort=False):
            rows = rows.sort_values("date")
            out[symbol] = (pd.to_datetime(rows.date).to_numpy(dtype="datetime64[ns]"), rows.close.to_numpy(float))
    return out, failed


def fill_outcomes(url: str | None = None, provider: str | None = None, data_dir=None, engine=None) -> OutcomeReport:
    """Fill the outcome of every pending signal whose horizon has passed in the data; one transaction.
    provider / data_dir override where each forecast run read its history."""
    if provider is not None:   # a mistyped provider is named once, before any signal is looked at
        from ..data import check_provider

        check_provider(provider)
    engine = engine or open_db(url, data_dir, create=False)
    filled, pending, failed = 0, 0, {}
    with session(engine) as s, s.begin():
        rows = s.execute(select(Signal, ForecastRun).join(ForecastRun, Signal.run_id == ForecastRun.id)
                         .outerjoin(Outcome, Outcome.signal_id == Signal.id).where(Outcome.signal_id.is_(None))
                         .order_by(Signal.id)).all()
        groups: dict[tuple, list] = {}
        for signal, run in rows:
            key = (run.universe, provider or run.provider, data_dir if data_dir is not None else run.data_dir)
            groups.setdefault(key, []).append(signal)
        for (universe, prov, folder), signals in groups.items():
            histories, bad = closes_of(universe, sorted({x.symbol for x in signals}), prov, folder)
            failed.update(bad)
            for signal in signals:
                got = histories.get(signal.symbol) and realised(*histories[signal.symbol], signal.as_of, signal.bars)
                if not got:
                    pending += 1
                    continue
                day, close, simple, log = got
                s.add(Outcome(signal_id=signal.id, realised_date=day, realised_close=close, realised_return=simple,
                              realised_log_return=log))
                filled += 1
    return OutcomeReport(filled, pending, failed)


def cmd_outcomes(args) -> int:
    report = fill_outcomes(args.db, args.provider, args.data_dir)
    print(f"filled {report.filled} outcome(s); {report.pending} signal(s) still pending")
    for symbol, reason in report.failed.items():
        print(f"marketgpt: {symbol}: no history for its outcomes: {reason}")
    return 1 if report.failed else 0


def add_commands(sub) -> None:
    p = sub.add_parser("outcomes", help="fill the realised returns of logged signals whose horizon has passed")
    p.add_argument("--db", help="database URL (default: sqlite:///<data-dir>/marketgpt.db; "
                                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)")
    p.add_argument("--provider", help="read closes from this provider (default: each forecast run's own)")
    p.add_argument("--data-dir", help="cache folder (default: each forecast run's, else $MARKETGPT_DATA or ./data)")
    p.set_defaults(func=cmd_outcomes)
