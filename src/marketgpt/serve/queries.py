"""What the API reads from the signal log, as plain JSON-ready rows. Every filter is a bound parameter of a
SQLAlchemy select, never text pasted into SQL, so a symbol such as "x'); DROP TABLE signals;--" is only data.
Rows come in a fixed order (as_of, symbol, bars), which is what makes SQLite and PostgreSQL answer identically."""

from __future__ import annotations

import math
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from .db import ForecastRun, Outcome, Signal
from .log import COLUMNS

#: the most rows one read returns; a client pages with as_of / symbol filters beyond it
MAX_ROWS = 5000
OUTCOME_COLUMNS = ("realised_date", "realised_close", "realised_return", "realised_log_return")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, date):
        return value.isoformat()
    return value


def _rows(engine: Engine, query) -> list[dict]:
    with engine.connect() as conn:
        return [{k: _clean(v) for k, v in row.items()} for row in conn.execute(query).mappings().all()]


def _signal_select():
    columns = [ForecastRun.model, Signal.model_version, Signal.symbol, Signal.as_of, Signal.horizon, Signal.bars,
               Signal.signal, *[getattr(Signal, c) for c in COLUMNS], Signal.baseline, Signal.baseline_prob_up,
               *[getattr(Outcome, c) for c in OUTCOME_COLUMNS]]
    return (select(*columns).join(ForecastRun, Signal.run_id == ForecastRun.id)
            .outerjoin(Outcome, Outcome.signal_id == Signal.id))


def latest_as_of(engine: Engine, model: str | None = None) -> date | None:
    query = select(func.max(Signal.as_of)).join(ForecastRun, Signal.run_id == ForecastRun.id)
    if model:
        query = query.where(ForecastRun.model == model)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def signals(engine: Engine, as_of: date | None = None, symbol: str | None = None, horizon: str | None = None,
            model: str | None = None) -> tuple[date | None, list[dict]]:
    """(the day, its signals): `as_of` or else the newest logged day, filtered by symbol, horizon and model."""
    day = as_of or latest_as_of(engine, model)
    if day is None:
        return None, []
    query = _signal_select().where(Signal.as_of == day)
    if symbol:
        query = query.where(Signal.symbol == symbol)
    if horizon:
        query = query.where(Signal.horizon == horizon)
    if model:
        query = query.where(ForecastRun.model == model)
    return day, _rows(engine, query.order_by(ForecastRun.model, Signal.symbol, Signal.bars).limit(MAX_ROWS))


def history(engine: Engine, symbol: str, horizon: str | None = None, model: str | None = None,
            limit: int = MAX_ROWS) -> list[dict]:
    """One symbol's signals over the days, newest last, each with its outcome once known."""
    query = _signal_select().where(Signal.symbol == symbol)
    if horizon:
        query = query.where(Signal.horizon == horizon)
    if model:
        query = query.where(ForecastRun.model == model)
    newest = query.order_by(Signal.as_of.desc(), ForecastRun.model, Signal.bars.desc()).limit(limit).subquery()
    return _rows(engine, select(newest).order_by(newest.c.as_of, newest.c.model, newest.c.bars))


def assets(engine: Engine) -> list[dict]:
    """Every symbol in the log: how many signals, and its first and last as-of day."""
    query = (select(Signal.symbol, func.count().label("signals"), func.min(Signal.as_of).label("first_as_of"),
                    func.max(Signal.as_of).label("last_as_of"))
             .group_by(Signal.symbol).order_by(Signal.symbol))
    return _rows(engine, query)


def history_source(engine: Engine, symbol: str) -> tuple[str, str, str | None] | None:
    """(universe, provider, data dir) the newest forecast run of `symbol` read its history from."""
    query = (select(ForecastRun.universe, ForecastRun.provider, ForecastRun.data_dir)
             .join(Signal, Signal.run_id == ForecastRun.id).where(Signal.symbol == symbol)
             .order_by(ForecastRun.as_of.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else tuple(row)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Signal)).scalar() or 0


def log_state(engine: Engine) -> tuple:
    """A fingerprint of the scored part of the log: counts, largest ids and sums of a few columns of signals and
    outcomes. A day logged again replaces its signals (and may reuse their ids on SQLite) and filling outcomes only
    adds rows, so a write that changes what the monitor reads changes this (short of a replacement whose counts, ids
    and sums all come out equal). One aggregate query per table."""
    with engine.connect() as conn:
        signals = conn.execute(select(func.count(Signal.id), func.max(Signal.id), func.sum(Signal.prob_up),
                                      func.sum(Signal.return_q05), func.sum(Signal.return_q95),
                                      func.sum(Signal.baseline_return_q95))).one()
        outcomes = conn.execute(select(func.count(Outcome.signal_id), func.max(Outcome.signal_id),
                                       func.sum(Outcome.realised_log_return))).one()
    return tuple(signals) + tuple(outcomes)
