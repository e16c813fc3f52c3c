"""The signal log's tables (SQLAlchemy 2) and how a database is opened: SQLite at <data-dir>/marketgpt.db by
default, PostgreSQL with a URL such as postgresql+psycopg://user:pw@host/db (psycopg 3).

Three tables, shaped for what reads them later (an API, a dashboard and a monitor of skill and calibration):
- forecast_runs: one row per model run and as-of day: the run directory, the model version (SHA-256 of
  best_model.pt, so a retrained run in the same folder is a different model), the data snapshot (the newest candle
  used), where the history came from (universe, provider, data dir: what `outcomes` reads the realised closes from).
- signals: one row per (forecast run, symbol, as_of, horizon), unique: P(up), expected/mean/median return, the 5/25/
  75/95% quantiles of the close and of the log return, LONG/SHORT/FLAT and confidence, and nullable columns for a
  GARCH(1,1)-t baseline's P(up) and return quantiles logged beside it, which the monitor scores against.
- outcomes: the realised close and return of a signal once its horizon has passed (one per signal).

The schema is created and upgraded by Alembic (migrations/ inside the package) each time a database is opened, so
nobody runs alembic by hand; SQLite migrations run in batch mode (it cannot ALTER most columns in place).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

from sqlalchemy import (Date, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint, create_engine, event,
                        text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from ..config import writable_dir
from ..errors import MarketGPTError

DB_NAME = "marketgpt.db"
QUANTILES = ("q05", "q25", "q75", "q95")


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ForecastRun(Base):
    __tablename__ = "forecast_runs"
    __table_args__ = (UniqueConstraint("run_path", "model_version", "as_of", name="uq_forecast_run"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_path: Mapped[str] = mapped_column(String(1024))
    model: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[date] = mapped_column(Date)
    data_snapshot: Mapped[str] = mapped_column(String(255))
    universe: Mapped[str] = mapped_column(String(1024))
    provider: Mapped[str] = mapped_column(String(1024))
    data_dir: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    signals: Mapped[list[Signal]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                 passive_deletes=True)


class Signal(Base):
    __tablename__ = "signals"
    __table_args__ = (UniqueConstraint("run_id", "symbol", "as_of", "horizon", name="uq_signal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("forecast_runs.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(String(255), index=True)
    as_of: Mapped[date] = mapped_column(Date, index=True)
    horizon: Mapped[str] = mapped_column(String(8))
    bars: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(64))
    last_close: Mapped[float | None] = mapped_column(Float, nullable=True)
    prob_up: Mapped[float] = mapped_column(Float)
    expected_return: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_log_return: Mapped[float | None] = mapped_column(Float, nullable=True)
    median_log_return: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_q05: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_q25: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_q75: Mapped[float | None] = mapped_column(Float, nullable=True)
    close_q95: Mapped[float | None] = mapped_column(Float, nullable=True)
    return_q05: Mapped[float | None] = mapped_column(Float, nullable=True)
    return_q25: Mapped[float | None] = mapped_column(Float, nullable=True)
    return_q75: Mapped[float | None] = mapped_column(Float, nullable=True)
    return_q95: Mapped[float | None] = mapped_column(Float, nullable=True)
    signal: Mapped[str] = mapped_column(String(5))
    confidence: Mapped[float] = mapped_column(Float)
    baseline: Mapped[str | None] = mapped_column(String(32), nullable=True)
    baseline_prob_up: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_return_q05: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_return_q25: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_return_q75: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline_return_q95: Mapped[float | None] = mapped_column(Float, nullable=True)
    run: Mapped[ForecastRun] = relationship(back_populates="signals")
    outcome: Mapped[Outcome | None] = relationship(back_populates="signal", cascade="all, delete-orphan",
                                                   passive_deletes=True)


class Outcome(Base):
    __tablename__ = "outcomes"

    signal_id: Mapped[int] = mapped_column(ForeignKey("signals.id", ondelete="CASCADE"), primary_key=True)
    realised_date: Mapped[date] = mapped_column(Date)
    realised_close: Mapped[float] = mapped_column(Float)
    realised_return: Mapped[float] = mapped_column(Float)
    realised_log_return: Mapped[float] = mapped_column(Float)
    filled_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    signal: Mapped[Signal] = relationship(back_populates="outcome")


def default_url(data_dir=None) -> str:
    from ..data.cache import default_data_dir

    return f"sqlite:///{(default_data_dir(data_dir) / DB_NAME).resolve()}"


def shown(url) -> str:
    """The URL as messages show it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url).split("@")[-1]


def open_db(url: str | None = None, data_dir=None, create: bool = True) -> Engine:
    """An engine on `url` (default: SQLite in the data dir) with the schema migrated to the newest version.
    A URL that is malformed, names a database other than SQLite or PostgreSQL, or reaches no server raises one line
    naming it. An in-memory SQLite is refused (the log would vanish with the command), and so, with create=False
    (the commands that read a log: outcomes, monitor), is a SQLite file that does not exist: a mistyped --data-dir
    must not report an empty new log."""
    given, url = bool(url), url or default_url(data_dir)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise MarketGPTError(f"--db {shown(url)}: not a database URL (sqlite:///PATH or "
                             f"postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise MarketGPTError(f"--db {shown(url)}: unknown database dialect '{parsed.drivername}' for the signal log, "
                             f"which is SQLite (sqlite:///PATH) or PostgreSQL "
                             f"(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise MarketGPTError(f"--db {shown(url)}: an in-memory database keeps nothing after the command; give a "
                                 f"file, sqlite:///PATH")
        path = Path(parsed.database)
        if not path.exists():
            if not create:
                option = f"--db {shown(url)}" if given else f"--data-dir {path.parent}"
                raise MarketGPTError(f"{option}: no signal log at {path} (log signals first: marketgpt signals "
                                     f"RUN_DIR --log, with the same --db or --data-dir)")
            writable_dir(path.parent, "signal log (--db)")
    try:
        engine = create_engine(parsed, **({"connect_args": {"connect_timeout": 10}}
                                          if parsed.get_backend_name() == "postgresql" else {}))
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise MarketGPTError(f"--db {shown(url)}: unknown database dialect "
                             f"'{parsed.drivername}' ({str(exc).splitlines()[0]})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        from .migrate import upgrade

        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
        upgrade(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise MarketGPTError(f"--db {shown(url)}: cannot open the database: {reason}") from None
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """Foreign keys on (SQLite leaves them off, and outcomes cascade with their signal); a 30 s busy timeout so a
    second writer waits for the first instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
