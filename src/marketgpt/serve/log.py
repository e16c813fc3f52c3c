"""Writing a day's signals to the log: one transaction per (model run, as-of day) batch, replacing that batch's
earlier rows, so re-running a day never duplicates and a crash mid-batch leaves the previous state."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
from sqlalchemy import delete, select

from ..errors import MarketGPTError
from .db import QUANTILES, ForecastRun, Signal, open_db, session

#: test hook: seconds to sleep after each signal row inside the transaction, each flushed row announced on stderr
#: (the crash test kills the writer once it has seen a row go in)
SLOW_WRITE_ENV = "MARKETGPT_TEST_SLOW_WRITE_S"
COLUMNS = ["last_close", "prob_up", "expected_return", "mean_log_return", "median_log_return",
           *[f"close_{q}" for q in QUANTILES], *[f"return_{q}" for q in QUANTILES], "confidence"]
#: the GARCH(1,1)-t baseline beside each signal (serve.baseline), NULL when the table has none
BASELINE_COLUMNS = ["baseline_prob_up", *[f"baseline_return_{q}" for q in QUANTILES]]


def model_version(run_dir) -> str:
    """SHA-256 of the run's best_model.pt: the weights themselves, not the folder name."""
    path = Path(run_dir) / "best_model.pt"
    if not path.is_file():
        raise MarketGPTError(f"{run_dir}: no best_model.pt, not a finished run")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _value(row, column):
    v = row.get(column)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _name(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def log_signals(table: pd.DataFrame, run_dir, universe: str, provider: str, data_dir=None, url: str | None = None,
                as_of=None, data_snapshot: str | None = None, engine=None) -> int:
    """Record a signal table (signals.signal_table's rows) computed from `run_dir` and return the forecast run id.
    The batch is (run, model version, as_of): as_of defaults to the newest as_of in the table."""
    if table.empty:
        raise MarketGPTError("no signal to log")
    engine = engine or open_db(url, data_dir)
    version = model_version(run_dir)
    day = pd.Timestamp(as_of if as_of is not None else table.as_of.max()).date()
    snapshot = data_snapshot or f"last candle {pd.Timestamp(table.as_of.max()):%Y-%m-%d}"
    pause = float(os.environ.get(SLOW_WRITE_ENV) or 0)
    run_path = str(Path(run_dir).resolve())
    with session(engine) as s, s.begin():
        run = s.scalar(select(ForecastRun).where(ForecastRun.run_path == run_path,
                                                 ForecastRun.model_version == version, ForecastRun.as_of == day))
        if run is None:
            run = ForecastRun(run_path=run_path, model=Path(run_dir).name, model_version=version, as_of=day)
            s.add(run)
        run.data_snapshot, run.universe, run.provider = snapshot, str(universe), str(provider)
        run.data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        s.flush()
        s.execute(delete(Signal).where(Signal.run_id == run.id))
        for row in table.to_dict("records"):
            s.add(Signal(run_id=run.id, symbol=str(row["symbol"]), as_of=pd.Timestamp(row["as_of"]).date(),
                         horizon=str(row["horizon"]), bars=int(row["bars"]), model_version=version,
                         signal=str(row["signal"]), baseline=_name(row.get("baseline")),
                         **{c: _value(row, c) for c in COLUMNS + BASELINE_COLUMNS}))
            if pause:
                s.flush()
                print(f"flushed {row['symbol']} {row['horizon']}", file=sys.stderr, flush=True)
                time.sleep(pause)
        return run.id


def read_signals(url: str | None = None, data_dir=None, engine=None, with_outcomes: bool = True) -> pd.DataFrame:
    """Every logged signal as one frame (with its outcome's columns, NaN while pending), in a fixed order."""
    from .db import Outcome

    engine = engine or open_db(url, data_dir)
    columns = [ForecastRun.model, Signal.model_version, Signal.symbol, Signal.as_of, Signal.horizon, Signal.bars,
               Signal.signal, *[getattr(Signal, c) for c in COLUMNS], Signal.baseline,
               *[getattr(Signal, c) for c in BASELINE_COLUMNS]]
    if with_outcomes:
        columns += [Outcome.realised_date, Outcome.realised_close, Outcome.realised_return, Outcome.realised_log_return]
    query = select(*columns).join(ForecastRun, Signal.run_id == ForecastRun.id)
    if with_outcomes:
        query = query.outerjoin(Outcome, Outcome.signal_id == Signal.id)
    query = query.order_by(ForecastRun.model, Signal.as_of, Signal.symbol, Signal.bars)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=[c.key for c in columns])
