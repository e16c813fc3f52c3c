"""The GARCH-t baseline logged beside each signal (past-only), and the model monitor on a replayed signal log.

The runs: a small model trained on three real index series (SPY, QQQ, DIA from ../shared/data, 2010 to October 2016),
once on the series as they are and once on a copy whose log returns from BREAK on are multiplied by 3. BREAK lies in
the test split, so both runs train on the same candles; the second one's test-split forecasts see the tripled
returns. Their one-step out-of-sample forecasts (the walk-forward's density rows, wf_outputs.one_step_tables) are
logged day by day with their baseline, the outcomes filled from the copied files, and the monitor run on the log."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import SHARED_DATA, fresh_pg, run_cli, run_dir_of, small_config

from marketgpt.serve.baseline import COLUMNS as BASELINE_COLUMNS
from marketgpt.signals import compute_signals

SERIES = (("indices", "SPY"), ("indices", "QQQ"), ("indices", "DIA"))
START, END, BREAK = "2010-01-01", "2016-10-31", "2016-05-02"


def copy_series(shared_data, folder, factor=1.0, when=BREAK, only=False):
    """The three series as files; from `when` on (or on that day only) each price p becomes ref * (p / ref)^factor,
    ref the last close before `when`: every log return from then on multiplied by `factor`."""
    for category, symbol in SERIES:
        frame = pd.read_csv(shared_data / category / f"{symbol}.csv.gz")
        dates = pd.to_datetime(frame.date)
        if factor != 1:
            ref = frame.close[dates < when].iloc[-1]
            hit = (dates == when) if only else (dates >= when)
            for col in ("open", "high", "low", "close"):
                frame.loc[hit, col] = ref * (frame.loc[hit, col] / ref) ** factor
        (folder / category).mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / category / f"{symbol}.csv", index=False)
    return folder


def universe_file(folder):
    path = folder / "three.csv"
    path.write_text("symbol,category\n" + "".join(f"{s},{c}\n" for c, s in SERIES))
    return path


def train_on(tmp, name, source):
    """A small run (20 epochs of at most 100 steps: about 6 s on 2 cores) on the series in `source`."""
    (tmp / name).mkdir()
    config = small_config(tmp / name, name, epochs=20, max_steps_per_epoch=100, batch_size=16, evaluate=False)
    raw = json.loads(config.read_text())
    raw["data"].update(universe=str(universe_file(tmp)), provider=f"files:{source}", start=START, end=END)
    config.write_text(json.dumps(raw))
    result = run_cli("train", config)
    assert result.returncode == 0, result.stderr
    return run_dir_of(result.stdout)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    tmp = tmp_path_factory.mktemp("monitor")
    source = copy_series(SHARED_DATA, tmp / "src_base")
    return {"tmp": tmp, "source": source, "run": train_on(tmp, "base", source), "shared": SHARED_DATA}


def _baseline(run, universe, source, as_of):
    table, _ = compute_signals(run, universe=str(universe), provider=f"files:{source}", as_of=as_of,
                               names=("1d", "1w", "1m"), samples=8, device="cpu")
    return table.set_index(["symbol", "horizon"])[["baseline", *BASELINE_COLUMNS]].sort_index()


def test_the_logged_baseline_uses_the_past_only(real):
    tmp, as_of = real["tmp"], "2016-06-01"
    universe = universe_file(tmp)
    base = _baseline(real["run"], universe, real["source"], as_of)
    assert (base.baseline == "garch_t").all() and np.isfinite(base[BASELINE_COLUMNS].to_numpy()).all()
    q = base[[f"baseline_return_{q}" for q in ("q05", "q25", "q75", "q95")]].to_numpy()
    assert (np.diff(q, axis=1) > 0).all()                                   # quantiles in order
    wider = base.xs("1m", level="horizon").baseline_return_q95 > base.xs("1d", level="horizon").baseline_return_q95
    assert wider.all()                                                      # a month spreads more than a day
    after = copy_series(real["shared"], tmp / "src_after", factor=3.0, when="2016-06-02")
    pd.testing.assert_frame_equal(_baseline(real["run"], universe, after, as_of), base)
    before = copy_series(real["shared"], tmp / "src_before", factor=1.5, when="2016-05-02", only=True)
    changed = _baseline(real["run"], universe, before, as_of)
    assert not np.allclose(changed[BASELINE_COLUMNS].to_numpy(), base[BASELINE_COLUMNS].to_numpy())


# --- the monitor on a replayed log -------------------------------------------------------------------------------

#: the replay: every test-split day up to this as-of day (60 trading days after BREAK)
REPLAY_END = "2016-07-27"
#: the x3 alarm must trip within this many trading days of BREAK, BREAK day 1 (it tripped on the 5th, 2016-05-06:
#: a WARN from the spread CUSUM of the pooled loss difference; the unchanged series peaked at 9.5, below WARN_AT 10)
DETECT_WITHIN = 10


def replay(run, source, universe, url, data_dir):
    """Log the run's one-step out-of-sample forecasts day by day (one batch per as-of day), each with the GARCH-t
    baseline of the history up to that day (serve.baseline.garch_baseline, refitted every 20 days as the evaluation
    does rather than daily, to keep the test fast), then fill the outcomes from the files."""
    from marketgpt.serve.baseline import BASELINE, COLUMNS, garch_baseline, symbol_seed
    from marketgpt.serve.db import open_db
    from marketgpt.serve.log import log_signals
    from marketgpt.serve.outcomes import fill_outcomes
    from marketgpt.signals import signal_table
    from marketgpt.wf_outputs import one_step_tables

    forecast, _ = one_step_tables(run, "cpu")
    forecast = forecast[forecast.as_of <= REPLAY_END].copy()
    forecast[COLUMNS] = np.nan
    for category, symbol in SERIES:
        frame = pd.read_csv(source / category / f"{symbol}.csv")
        dates, returns = pd.to_datetime(frame.date), np.diff(np.log(frame.close.to_numpy()))
        mine = (forecast.symbol == symbol).to_numpy()
        origins = np.searchsorted(dates, forecast.as_of[mine]) - 1
        prob_up, q = garch_baseline(returns, origins, [1], symbol_seed(symbol), refit_every=20)
        forecast.loc[mine, COLUMNS] = np.column_stack([prob_up[:, 0], q[:, 0]])
    engine = open_db(url)
    for day, rows in forecast.groupby("as_of"):
        table = signal_table(rows, {s: "business" for _, s in SERIES}, ("1d",))
        table = table.merge(rows[["symbol", *COLUMNS]], on="symbol").assign(baseline=BASELINE)
        log_signals(table, run, str(universe), f"files:{source}", data_dir, as_of=day, engine=engine)
    report = fill_outcomes(engine=engine)
    assert report.filled == len(forecast) and not report.failed
    return engine


@pytest.fixture(scope="module")
def logs(real):
    tmp = real["tmp"]
    tripled = copy_series(real["shared"], tmp / "src_x3", factor=3.0)
    x3_run = train_on(tmp, "x3", tripled)
    universe = universe_file(tmp)
    out = {}
    for name, run, source in (("base", real["run"], real["source"]), ("x3", x3_run, tripled)):
        url = f"sqlite:///{tmp / f'{name}.db'}"
        replay(run, source, universe, url, tmp / name / "data").dispose()
        out[name] = url
    return out


def test_tripled_returns_trip_the_alarm_and_the_real_series_stay_quiet(logs):
    from marketgpt.serve.monitor import monitor_report

    quiet, tripped = monitor_report(logs["base"]), monitor_report(logs["x3"])
    json.dumps(quiet, allow_nan=False), json.dumps(tripped, allow_nan=False)
    assert [m["horizon"] for m in quiet["models"]] == ["1d"] and len(tripped["models"]) == 1
    q, t = quiet["models"][0], tripped["models"][0]
    assert q["n"] == t["n"] > 3 * 150 and q["metrics"]["baseline_n"] == q["n"]
    assert quiet["status"] == q["status"] == "OK" and q["tripped_on"] is None, q["reason"]
    assert q["metrics"]["cusum_max"] < q["metrics"]["warn_at"] and q["metrics"]["warn_on"] is None
    assert tripped["status"] == t["status"] in ("WARN", "RETRAIN"), t["reason"]
    assert t["tripped_on"] == t["metrics"][f"{t['status'].lower()}_on"] and "CUSUM" in t["reason"]
    days = pd.bdate_range(BREAK, t["tripped_on"])
    assert pd.Timestamp(t["tripped_on"]) >= pd.Timestamp(BREAK) and len(days) <= DETECT_WITHIN, t["tripped_on"]
    assert t["tripped_on"] in t["reason"]
    # after the break the baseline adapts to the wider moves and the model does not: its skill falls
    assert t["metrics"]["skill_qs"] < q["metrics"]["skill_qs"]
    for key in ("coverage50", "coverage90", "kupiec50_p", "kupiec90_p", "pit_ks_p", "brier", "brier_baseline"):
        assert q["metrics"][key] is not None and 0 <= q["metrics"][key] <= 1


def test_monitor_command(logs, tmp_path):
    from marketgpt.serve.monitor import monitor_report

    report = monitor_report(logs["x3"])
    assert report["status"] != "OK"
    result = run_cli("monitor", "--db", logs["x3"], "--horizon", "1d")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1]
    assert report["status"] in line and report["models"][0]["tripped_on"] in line
    assert result.stdout.rstrip().endswith(f"overall: {report['status']}")
    as_json = run_cli("monitor", "--db", logs["x3"], "--json")
    assert json.loads(as_json.stdout) == report
    assert json.loads(run_cli("monitor", "--db", logs["x3"], "--run", "nosuchrun", "--json").stdout) == \
        {"status": "NO DATA", "models": []}
    empty = run_cli("monitor", "--db", f"sqlite:///{tmp_path / 'empty.db'}")
    assert empty.returncode == 0 and empty.stdout.startswith("NO DATA"), empty.stderr
    bad = run_cli("monitor", "--db", "postgresql+psycopg://u:secret@127.0.0.1:1/db")
    assert bad.returncode == 2 and "secret" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    horizon = run_cli("monitor", "--db", logs["x3"], "--horizon", "3d")
    assert horizon.returncode == 2 and "horizon 3d unknown" in horizon.stderr


def test_the_monitor_reads_postgresql_like_sqlite(logs, pg_url):
    """The tripped log copied row by row into an emptied PostgreSQL gives the same report."""
    from sqlalchemy import select

    from marketgpt.serve.db import Base, open_db
    from marketgpt.serve.monitor import monitor_report

    source, target = open_db(logs["x3"]), open_db(fresh_pg(pg_url))
    with source.connect() as read, target.begin() as write:
        for table in Base.metadata.sorted_tables:
            rows = [dict(r) for r in read.execute(select(table)).mappings()]
            if rows:
                write.execute(table.insert(), rows)
    assert monitor_report(engine=target) == monitor_report(engine=source)
    source.dispose(), target.dispose()


def test_the_api_serves_the_cached_report_until_the_log_changes(logs, tmp_path):
    """GET /v1/monitor from a real uvicorn equals monitor_report, before and after outcomes are removed from the log
    behind the server's back (the cache sees the change and recomputes)."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    import httpx
    from sqlalchemy import delete, func, select

    from marketgpt.serve.db import Outcome, open_db
    from marketgpt.serve.monitor import monitor_report

    db = tmp_path / "served.db"
    shutil.copy(logs["x3"].removeprefix("sqlite:///"), db)
    url = f"sqlite:///{db}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", "serve", "--db", url, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        first = httpx.get(base + "/v1/monitor", timeout=60).json()
        assert first == monitor_report(url) and first["status"] != "OK"
        assert httpx.get(base + "/v1/monitor", timeout=60).json() == first
        engine = open_db(url)
        with engine.begin() as conn:
            last = conn.execute(select(func.max(Outcome.realised_date))).scalar()
            conn.execute(delete(Outcome).where(Outcome.realised_date >= last - pd.Timedelta(days=40)))
        engine.dispose()
        second = httpx.get(base + "/v1/monitor", timeout=60).json()
        assert second == monitor_report(url) and second["models"][0]["n"] < first["models"][0]["n"]
    finally:
        server.kill()
        server.wait()


def test_the_alarm_uses_the_past_only():
    """The CUSUMs up to day t, and the pooled days before the last, do not move when later days change; changing
    day t moves them from day t on."""
    from marketgpt.serve import alarm as A

    x = np.random.default_rng(3).standard_t(5, 300)
    base = A.cusum(x)
    later = x.copy()
    later[200:] += 5.0
    moved = A.cusum(later)
    for side in A.SIDES:
        np.testing.assert_array_equal(moved[side][:200], base[side][:200])
    assert not np.allclose(moved["up"][200:], base["up"][200:])
    days = np.repeat(pd.bdate_range("2016-01-04", periods=60).to_numpy(), 4)
    e = np.random.default_rng(4).normal(size=len(days))
    short_days, short = A.pool_days(e[:120], days[:120])
    full_days, full = A.pool_days(e, days)
    np.testing.assert_array_equal(full_days[:len(short_days) - 1], short_days[:-1])
    np.testing.assert_allclose(full[:len(short) - 1], short[:-1])
    thin = np.concatenate([days, days[-1:] + np.timedelta64(1, "D"), np.repeat(days[-1:] + np.timedelta64(3, "D"), 4)])
    pooled_days, pooled = A.pool_days(np.append(e, [10.0, 0, 0, 0, 0]), thin)   # a thin day folds into the next one
    assert len(pooled_days) == 61 and pooled[-1] == pytest.approx(10.0 / 5)
    assert len(A.pool_days(np.append(e, 10.0), thin[:-4])[0]) == 60              # and waits for it


def test_a_stream_without_a_full_block_is_ok_and_warming_up(logs):
    """A 1m stream (21-bar blocks) with fewer outcome days than one block has no CUSUM day yet: OK, warming up."""
    from marketgpt.serve import alarm as A
    from marketgpt.serve.db import open_db
    from marketgpt.serve.monitor import assess, read_scored

    assert all(len(s) == 0 for s in A.cusum(np.zeros(0)).values())
    rows = read_scored(open_db(logs["base"]))
    rows = rows[rows.realised_date <= sorted(rows.realised_date.unique())[15]].assign(horizon="1m", bars=21)
    entry = assess(rows)
    assert entry["status"] == "OK" and entry["reason"].startswith("warming up") and entry["metrics"]["pooled_days"] == 0


def test_the_thresholds_keep_false_alarms_rare_on_a_simulated_null():
    """On i.i.d. Student-t(5) days (bench/monitor_alarm.py: ARL to a false WARN >= 5,900 days of 6,000 simulated)
    at most 5% of 200 streams get a WARN within 250 days after the warm-up; a shift of +3 (2.8 robust SDs) trips
    at least 90% of the others within 10 days (measured: median 5.5, 95% within 9)."""
    from marketgpt.serve import alarm as A

    rng = np.random.default_rng(5)
    null = rng.standard_t(5, (200, A.WARMUP_DAYS + 250))
    worst = np.maximum.reduce(list(A.cusum(null).values()))
    assert (worst > A.WARN_AT).any(axis=1).mean() <= 0.05
    start = A.WARMUP_DAYS + 100
    shifted = null.copy()
    shifted[:, start:] += 3.0
    worst = np.maximum.reduce(list(A.cusum(shifted).values()))
    first = np.array([A.first_above(row, A.WARN_AT) or len(row) for row in worst])
    quiet_before = first >= start
    assert quiet_before.mean() >= 0.9 and np.mean(first[quiet_before] < start + 10) >= 0.9
