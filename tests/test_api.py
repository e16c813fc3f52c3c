"""The REST API and its dashboard, served by a real uvicorn on 127.0.0.1 over a real SQLite and PostgreSQL log:
the daily loop on ../shared/data (signals replayed over days, outcomes, monitor, API, page), identical answers from
both databases, bad requests (4xx, never 500), the token on the write endpoint, a server killed with SIGKILL in the
middle of POST /v1/signals/run, and the page in a headless chromium."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from helpers import ROOT, SHARED_DATA, fresh_pg

from marketgpt.serve.db import open_db
from marketgpt.serve.log import SLOW_WRITE_ENV, log_signals, read_signals
from marketgpt.serve.outcomes import fill_outcomes
from marketgpt.signals import compute_signals

TOKEN = "test-token-3f9a"
DAYS = [f"{d:%Y-%m-%d}" for d in pd.bdate_range("2017-10-02", periods=6)]
UNIVERSE = "symbol,category\nSPY,indices\nQQQ,indices\nGLD,commodities\nBTC-USD,crypto\n"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`marketgpt serve` in a subprocess; its stderr is collected line by line for the test to wait on."""

    def __init__(self, db, loop, env=None, extra=()):
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "marketgpt.cli", "serve", "--db", db, "--run", str(loop["run"]),
               "--universe", str(loop["universe"]), "--provider", loop["provider"], "--data-dir", str(loop["cache"]),
               "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "MARKETGPT_API_TOKEN": TOKEN, **(env or {})})
        self.lines, self.flushed = [], threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.3)
        raise AssertionError(f"the server did not come up: {''.join(self.lines)}")

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("flushed"):
                self.flushed.set()

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=120, **kw)

    def post(self, path, body, token=TOKEN, **kw):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=300, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def loop(demo_run, tmp_path_factory):
    """The demo run's signals for SPY, QQQ, GLD and BTC-USD (never seen in training) on six days of October 2017,
    read from ../shared/data, computed once for the module."""
    shared = SHARED_DATA
    if not (shared / "manifest.csv").exists():
        pytest.skip(f"real data folder {shared} is absent")
    tmp = tmp_path_factory.mktemp("api")
    universe = tmp / "universe.csv"
    universe.write_text(UNIVERSE)
    loop = {"run": demo_run[0], "universe": universe, "provider": f"files:{shared}", "cache": tmp / "cache",
            "tmp": tmp}
    loop["tables"] = [compute_signals(loop["run"], None, str(universe), loop["provider"], loop["cache"], day,
                                      ("1d", "1w"), 64)[0] for day in DAYS]
    return loop


def _fill(url, loop):
    engine = open_db(url)
    for table in loop["tables"]:
        log_signals(table, loop["run"], str(loop["universe"]), loop["provider"], loop["cache"], engine=engine)
    report = fill_outcomes(engine=engine)
    engine.dispose()
    return report


@pytest.fixture(scope="module")
def sqlite_server(loop):
    url = f"sqlite:///{loop['tmp'] / 'log.db'}"
    _fill(url, loop)
    server = Server(url, loop)
    yield server, url
    server.stop()


def test_the_daily_loop_is_served_the_same_from_sqlite_and_postgresql(loop, sqlite_server, pg_url):
    server, url = sqlite_server
    pg = fresh_pg(pg_url)
    report = _fill(pg, loop)
    assert report.filled > 0 and report.failed == {}
    rows = read_signals(url)
    assert len(rows) == 6 * 4 * 2 and rows.realised_return.notna().sum() == report.filled
    health = server.get("/health").json()
    assert health["signals"] == len(rows) and health["status"] == "ok"
    today = server.get("/v1/signals").json()
    assert today["as_of"] == DAYS[-1] and {r["symbol"] for r in today["signals"]} == {"SPY", "QQQ", "GLD", "BTC-USD"}
    logged = rows[rows.as_of == pd.Timestamp(DAYS[-1]).date()]
    got = {(r["symbol"], r["horizon"]): r["prob_up"] for r in today["signals"]}
    assert got == {(r.symbol, r.horizon): r.prob_up for r in logged.itertuples()}
    spy = server.get("/v1/signals/history", params={"symbol": "SPY", "horizon": "1d"}).json()
    assert [r["as_of"] for r in spy["signals"]] == DAYS
    assert all(r["realised_close"] is not None for r in spy["signals"])      # every 1-day outcome is in the data
    fan = server.get("/v1/fan", params={"symbol": "SPY"}).json()
    assert fan["history"][-1]["bar"] == 0 and fan["history"][-1]["date"] == DAYS[-1] and fan["realised"]
    assert [b["bars"] for b in fan["bands"]] == [1, 5] and all(b["q05"] < b["q95"] for b in fan["bands"])
    monitor = server.get("/v1/monitor").json()
    assert monitor["status"] in ("OK", "WARN", "RETRAIN", "NO DATA") and isinstance(monitor["models"], list)
    other = Server(pg, loop)
    try:
        paths = ["/v1/assets", "/v1/signals", f"/v1/signals?as_of={DAYS[2]}&horizon=1w",
                 "/v1/signals/history?symbol=BTC-USD", "/v1/fan?symbol=GLD", "/v1/monitor"]
        for path in paths:
            assert server.get(path).json() == other.get(path).json(), path
        assert other.get("/health").json()["signals"] == len(rows)
    finally:
        other.stop()


def test_forecast_endpoint_gives_ordered_quantiles_for_a_ticker_it_never_saw(sqlite_server):
    server, _ = sqlite_server
    answer = server.post("/v1/forecast", {"symbol": "SPY", "horizon": 5, "samples": 64, "as_of": "2017-06-30"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["as_of"] == "2017-06-30" and len(body["steps"]) == 5 and body["known_asset"] is False
    for step in body["steps"]:
        assert step["close_q05"] <= step["close_q25"] <= step["close_q50"] <= step["close_q75"] <= step["close_q95"]
        assert 0 <= step["prob_up"] <= 1
    assert body["steps"][0]["date"] == "2017-07-03"


HOSTILE = "x'); DROP TABLE signals;--"
BAD = [
    ("get", "/v1/signals?as_of=2017-13-01", None, 422, "as_of"),
    ("get", "/v1/signals?as_of=yesterday", None, 422, "as_of"),
    ("get", "/v1/signals?horizon=3y", None, 422, "horizon"),
    ("get", "/v1/signals?symbol=" + "A" * 200, None, 422, "symbol"),
    ("get", "/v1/signals/history", None, 422, "symbol"),
    ("get", "/v1/signals/history?symbol=NOPE", None, 404, "NOPE"),
    ("get", "/v1/signals/history?symbol=SPY&limit=0", None, 422, "limit"),
    ("get", "/v1/signals/history?symbol=SPY&limit=many", None, 422, "limit"),
    ("get", "/v1/fan?symbol=NOPE", None, 404, "NOPE"),
    ("get", "/v1/fan?symbol=SPY&days=1", None, 422, "days"),
    ("get", "/v1/monitor?horizon=1y", None, 422, "horizon"),
    ("get", "/v1/nothing-here", None, 404, "Not Found"),
    ("post", "/v1/forecast", {}, 422, "symbol"),
    ("post", "/v1/forecast", {"symbol": "SPY", "horizon": "five"}, 422, "horizon"),
    ("post", "/v1/forecast", {"symbol": "SPY", "horizon": 0}, 422, "horizon"),
    ("post", "/v1/forecast", {"symbol": "SPY", "horizon": 500}, 422, "horizon"),
    ("post", "/v1/forecast", {"symbol": "SPY", "samples": 10**9}, 422, "samples"),
    ("post", "/v1/forecast", {"symbol": "SPY", "samples": -3}, 422, "samples"),
    ("post", "/v1/forecast", {"symbol": "SPY", "as_of": "31/12/2017"}, 422, "as_of"),
    ("post", "/v1/forecast", {"symbol": "SPY", "as_of": "1990-01-02"}, 422, "before its first candle"),
    ("post", "/v1/forecast", {"symbol": "NOPE"}, 404, "NOPE"),
    ("post", "/v1/forecast", {"symbol": HOSTILE}, 404, "DROP TABLE"),
    ("post", "/v1/forecast", {"symbol": "SPY", "sample": 5}, 422, "sample"),
    ("post", "/v1/forecast", [1, 2, 3], 422, "JSON object"),
    ("post", "/v1/forecast", "raw:{not json", 422, "not valid JSON"),
    ("post", "/v1/forecast", "raw:" + "x" * 100_000, 413, "body over"),
    ("post", "/v1/signals/run", {}, 401, "missing bearer token"),
    ("post", "/v1/signals/run", {"token": "wrong"}, 401, "wrong bearer token"),
    ("post", "/v1/signals/run", {"horizons": ["3y"]}, 400, "3y"),
    ("post", "/v1/signals/run", {"samples": 2}, 422, "samples"),
    ("post", "/v1/signals/run", {"symbols": ["NOPE"]}, 400, "NOPE"),
    ("post", "/v1/signals/run", {"as_of": "2017-02-30"}, 422, "as_of"),
    ("delete", "/v1/signals", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize("method, path, body, status, words", BAD, ids=[f"{m} {p[:40]}" for m, p, *_ in BAD])
def test_bad_requests_get_a_4xx_with_a_one_line_message(sqlite_server, method, path, body, status, words):
    server, url = sqlite_server
    before = len(read_signals(url))
    token = TOKEN
    if isinstance(body, dict) and "token" in body:
        body = {k: v for k, v in body.items() if k != "token"}
        token = "wrong"
    elif path == "/v1/signals/run" and body == {}:
        token = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if isinstance(body, str) and body.startswith("raw:"):
        answer = httpx.post(server.url + path, content=body[4:], headers={**headers, "content-type":
                                                                         "application/json"}, timeout=60)
    elif body is None:
        answer = httpx.request(method.upper(), server.url + path, headers=headers, timeout=60)
    else:
        answer = httpx.post(server.url + path, json=body, headers=headers, timeout=120)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert words in message and "\n" not in message and "Traceback" not in answer.text
    assert len(read_signals(url)) == before                                # a refused request changes nothing


def test_hostile_symbols_are_data_and_the_server_binds_loopback(loop, sqlite_server):
    server, url = sqlite_server
    answer = server.get("/v1/signals", params={"symbol": HOSTILE})
    assert answer.status_code == 200 and answer.json()["count"] == 0
    assert len(read_signals(url)) == 6 * 4 * 2                              # the table is still there, whole
    assert any(f"http://127.0.0.1:{server.port}" in line for line in server.lines)


def test_writes_need_the_token_and_are_off_without_one(loop, tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    server = Server(url, loop, env={"MARKETGPT_API_TOKEN": ""})
    try:
        answer = server.post("/v1/signals/run", {"samples": 16})
        assert answer.status_code == 403 and "MARKETGPT_API_TOKEN" in answer.json()["error"]
        assert server.get("/v1/signals").json() == {"as_of": None, "count": 0, "signals": []}
        assert server.get("/v1/monitor").json()["status"] == "NO DATA"
    finally:
        server.stop()
    guarded = Server(url, loop, extra=["--protect-reads"])
    try:
        assert guarded.get("/v1/signals").status_code == 401
        assert guarded.get("/v1/signals", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        guarded.stop()


def _day(url, day):
    rows = read_signals(url, with_outcomes=False)
    return rows[rows.as_of == pd.Timestamp(day).date()].drop(columns=["model_version"]).reset_index(drop=True)


def test_a_server_killed_during_a_signal_run_keeps_the_day_whole_or_absent(loop, tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    engine = open_db(url)
    log_signals(loop["tables"][0], loop["run"], str(loop["universe"]), loop["provider"], loop["cache"],
                engine=engine)
    engine.dispose()
    previous = _day(url, DAYS[0])
    body = {"as_of": DAYS[1], "horizons": ["1d", "1w"], "samples": 64}
    server = Server(url, loop, env={SLOW_WRITE_ENV: "60"})
    threading.Thread(target=lambda: _quietly(server.post, "/v1/signals/run", body), daemon=True).start()
    try:
        assert server.flushed.wait(180), "the server never got into the day's batch"
    finally:
        server.stop(signal.SIGKILL)
    assert _day(url, DAYS[1]).empty                                         # none of the killed day
    pd.testing.assert_frame_equal(_day(url, DAYS[0]), previous)             # the day before, untouched
    server = Server(url, loop)
    try:
        first = server.post("/v1/signals/run", body)
        assert first.status_code == 200, first.text
        assert first.json()["signals"] == 8 and first.json()["failed"] == {}
        whole = _day(url, DAYS[1])
        assert len(whole) == 8
        again = server.post("/v1/signals/run", body)
        assert again.status_code == 200
        pd.testing.assert_frame_equal(_day(url, DAYS[1]), whole)            # the same rows, no duplicates
        assert len(read_signals(url)) == 16
    finally:
        server.stop()


def _quietly(call, *args):
    try:
        call(*args)
    except httpx.TransportError:      # the server was killed under the request, as intended
        pass


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        binary = shutil.which(name)
        if binary:
            driver = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
            if Path(driver).exists():
                return binary, driver
    message = "no chromium with chromedriver: apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_the_dashboard_shows_the_logged_rows_in_a_headless_chromium(sqlite_server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, _ = sqlite_server
    binary, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        expected = server.get("/v1/signals").json()["signals"]
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#signals tbody tr")) == len(expected))
        cells = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                 for tr in browser.find_elements(By.CSS_SELECTOR, "#signals tbody tr")]
        assert {(c[0], c[1], c[2]) for c in cells} == {(r["symbol"], r["horizon"], r["signal"]) for r in expected}
        assert browser.find_element(By.ID, "as-of").text == f"as of {DAYS[-1]}"
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#fan path")) >= 3)
        status = server.get("/v1/monitor").json()["status"]
        wait.until(lambda b: b.find_element(By.ID, "monitor").text == f"monitor {status}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#monitor-table tbody tr")) == 2     # 1d and 1w
        browser.find_element(By.ID, "f-symbol").send_keys("BTC")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#signals tbody tr")) == 2)
        shot = Path(os.environ.get("MARKETGPT_TEST_SCREENSHOT", tmp_path / "dashboard.png"))
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        errors = [e for e in browser.get_log("browser")               # no script error; the missing backtest's
                  if e["level"] == "SEVERE" and "equity.png" not in e["message"]]     # 404 is expected
        assert not errors, json.dumps(errors)
    finally:
        browser.quit()


def test_serve_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "marketgpt.cli", "serve", "--db", f"sqlite:///{tmp_path / 'a.db'}",
                             "--run", str(tmp_path), "--port", str(_port())], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "not a finished run" in result.stderr and "Traceback" not in result.stderr
