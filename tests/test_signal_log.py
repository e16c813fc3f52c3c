"""The signal log on SQLite and on a real PostgreSQL: schema by migration, idempotent days, one transaction per day
(a writer killed with SIGKILL mid-batch leaves the previous state), hostile strings, bad URLs, outcomes from the
candles without look-ahead, and a replay of a tiny run's signals over several days.

PostgreSQL: the db_url fixture of conftest.py."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, fresh_pg, run_cli, run_dir_of, small_config
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from marketgpt.errors import MarketGPTError
from marketgpt.serve.db import open_db
from marketgpt.serve.log import SLOW_WRITE_ENV, log_signals, read_signals
from marketgpt.serve.migrate import current
from marketgpt.serve.outcomes import fill_outcomes
from marketgpt.signals import compute_signals

@pytest.fixture
def fake_run(tmp_path):
    run = tmp_path / "run_a"
    run.mkdir()
    (run / "best_model.pt").write_bytes(b"weights-a")
    return run


def day_table(day: str, symbols=("AAPL", "MSFT"), shift: float = 0.0) -> pd.DataFrame:
    rows = []
    for i, symbol in enumerate(symbols):
        for horizon, bars in (("1d", 1), ("1w", 5)):
            p = 0.4 + 0.05 * i + 0.01 * bars + shift
            rows.append(dict(symbol=symbol, as_of=pd.Timestamp(day), horizon=horizon, bars=bars, last_close=100.0 + i,
                             prob_up=p, expected_return=0.001 * bars, mean_log_return=0.0009 * bars,
                             median_log_return=np.nan, close_q05=90.0, close_q25=95.0, close_q75=105.0,
                             close_q95=110.0, return_q05=-0.1, return_q25=-0.05, return_q75=0.05, return_q95=0.1,
                             signal="LONG" if p > 0.55 else "FLAT", confidence=max(p, 1 - p)))
    return pd.DataFrame(rows)


def test_schema_is_migrated_on_open(db_url):
    engine = open_db(db_url)
    assert {"forecast_runs", "signals", "outcomes", "alembic_version"} <= set(inspect(engine).get_table_names())
    assert current(engine) == "0001"
    open_db(db_url)          # a second open finds it at head and changes nothing
    assert current(engine) == "0001"


def test_rerunning_a_day_replaces_its_rows(db_url, fake_run):
    engine = open_db(db_url)
    first = log_signals(day_table("2012-03-01"), fake_run, "sample", "sample", engine=engine)
    log_signals(day_table("2012-03-02"), fake_run, "sample", "sample", engine=engine)
    again = log_signals(day_table("2012-03-01", shift=0.2), fake_run, "sample", "sample", engine=engine)
    assert again == first
    rows = read_signals(engine=engine)
    assert len(rows) == 8 and not rows.duplicated(["model", "symbol", "as_of", "horizon"]).any()
    day1 = rows[rows.as_of == pd.Timestamp("2012-03-01").date()]
    assert np.allclose(day1.prob_up.sort_values(), (day_table("2012-03-01", shift=0.2).prob_up).sort_values())
    (fake_run / "best_model.pt").write_bytes(b"weights-b")     # retrained: another model version, its own rows
    log_signals(day_table("2012-03-01"), fake_run, "sample", "sample", engine=engine)
    assert read_signals(engine=engine).model_version.nunique() == 2


def test_hostile_symbol_is_stored_as_data(db_url, fake_run):
    hostile = "x'); DROP TABLE signals;--"
    engine = open_db(db_url)
    log_signals(day_table("2012-03-01", symbols=(hostile, 'a"b\\c')), fake_run, "sample", "sample", engine=engine)
    rows = read_signals(engine=engine)
    assert set(rows.symbol) == {hostile, 'a"b\\c'} and len(rows) == 4
    assert "signals" in inspect(engine).get_table_names()


WRITER = """
import sys, pandas as pd
sys.path.insert(0, {tests!r})
from test_signal_log import day_table
from marketgpt.serve.log import log_signals
log_signals(day_table("2012-03-01", shift=0.3), {run!r}, "sample", "sample", url={url!r})
print("done", flush=True)
"""


def test_a_writer_killed_mid_batch_leaves_the_previous_day(db_url, fake_run):
    engine = open_db(db_url)
    log_signals(day_table("2012-03-01"), fake_run, "sample", "sample", engine=engine)
    before = read_signals(engine=engine)
    engine.dispose()
    code = WRITER.format(tests=str(ROOT / "tests"), run=str(fake_run), url=db_url)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, SLOW_WRITE_ENV: "60"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = iter(proc.stderr.readline, "")
    assert any(line.startswith("flushed") for line in lines), "the writer never got into its batch"
    time.sleep(0.2)
    assert proc.poll() is None, "the writer finished before it was killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after = read_signals(engine=open_db(db_url))
    pd.testing.assert_frame_equal(after, before)


def test_bad_urls_are_one_line_without_the_password(tmp_path):
    for url, reason in [("nosuchdb://u:secret@host/db", "unknown database dialect"),
                        ("postgresql+psycopg://u:secret@127.0.0.1:1/db", "cannot open the database"),
                        ("not a url", "not a database URL")]:
        with pytest.raises(MarketGPTError, match=reason) as info:
            open_db(url)
        assert "secret" not in str(info.value) and "\n" not in str(info.value)
    result = run_cli("outcomes", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/db", cwd=tmp_path)
    assert result.returncode == 2 and "secret" not in result.stderr and "***" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_sqlite_and_postgresql_give_identical_results(tmp_path, pg_url, fake_run):
    frames = []
    for url in (f"sqlite:///{tmp_path / 'same.db'}", fresh_pg(pg_url)):
        engine = open_db(url)
        for day in ("2012-03-01", "2012-03-02", "2012-03-03"):
            log_signals(day_table(day), fake_run, "sample", "sample", data_dir=tmp_path / "data", engine=engine)
        log_signals(day_table("2012-03-02", shift=0.1), fake_run, "sample", "sample", data_dir=tmp_path / "data",
                    engine=engine)
        report = fill_outcomes(engine=engine)
        assert report.filled == 12 and report.pending == 0
        frames.append(read_signals(engine=engine))
        engine.dispose()
    pd.testing.assert_frame_equal(frames[0], frames[1])


def closes(data_dir, symbol):
    from marketgpt.data import load_candles, load_universe

    frame = load_universe("sample")
    c = load_candles(frame[frame.symbol == symbol], "sample", data_dir)
    return pd.Series(c.close.to_numpy(), index=pd.to_datetime(c.date))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("log")
    result = run_cli("train", small_config(tmp, "log", epochs=1, evaluate=False))
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout), tmp / "data"


def test_replayed_days_get_the_realised_returns_and_no_look_ahead(db_url, tiny_run, tmp_path):
    run, data = tiny_run
    history = closes(data, "AAPL")
    days = history.index[-12:-2:3]          # four as-of days; the last one's 1w horizon has not passed
    result = run_cli("signals", run, "--symbols", "AAPL,MSFT", "--horizons", "1d,1w", "--samples", "16",
                     "--as-of", f"{days[0]:%Y-%m-%d}", "-o", tmp_path / "s.csv", "--log", "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "logged 4 signals" in result.stdout
    password = make_url(db_url).password
    assert not password or password not in result.stdout
    engine = open_db(db_url)
    for day in days[1:]:                    # the rest of the replay through the Python API, in this process
        table, forecast = compute_signals(run, ["AAPL", "MSFT"], as_of=f"{day:%Y-%m-%d}", names=("1d", "1w"),
                                          samples=16, device="cpu")
        universe, provider, folder = forecast.history
        log_signals(table, run, universe, provider, folder, as_of=f"{day:%Y-%m-%d}", engine=engine)
    engine.dispose()
    result = run_cli("outcomes", "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert "filled 14 outcome(s); 2 signal(s) still pending" in result.stdout
    again = run_cli("outcomes", "--db", db_url)
    assert "filled 0 outcome(s); 2 signal(s) still pending" in again.stdout
    rows = read_signals(db_url)
    assert len(rows) == 16
    for r in rows.itertuples():
        series = closes(data, r.symbol)
        start = series.index.get_loc(pd.Timestamp(r.as_of))
        if start + r.bars >= len(series):
            assert pd.isna(r.realised_close)
            continue
        assert pd.Timestamp(r.realised_date) == series.index[start + r.bars] > pd.Timestamp(r.as_of)
        assert r.realised_return == pytest.approx(series.iloc[start + r.bars] / series.iloc[start] - 1, rel=1e-12)
        assert r.last_close == pytest.approx(series.iloc[start], rel=1e-9)
