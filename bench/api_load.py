"""Load on the REST API: C concurrent clients (default 32) against `marketgpt serve` on 127.0.0.1, a fixed number
of requests per endpoint, over a signal log replayed from ../shared/data (or the sample data where it is absent).

Reported per endpoint: errors (any non-2xx or transport failure), requests/s, p50 and p99 latency, and p50 as a
ratio of GET /health's p50 measured in the same run (the floor: routing, JSON, the event loop and the network
stack, with no database or model work). /v1/forecast runs the model (5 days ahead, 64 paths) behind one lock, so
its rate is the model's rate, not the server's.

Run: `python bench/api_load.py [--run RUN_DIR] [--clients 32] [--requests 1000]` (writes bench/results/api_load.json;
without --run it trains configs/sample.json first, about a minute on a laptop CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
SYMBOLS = {"SPY": "indices", "QQQ": "indices", "DIA": "indices", "IWM": "indices", "GLD": "commodities",
           "TLT": "indices", "BTC-USD": "crypto", "EURUSD": "fx"}


def trained_run(tmp: Path) -> Path:
    out = subprocess.run([sys.executable, "-m", "marketgpt.cli", "train", str(ROOT / "configs" / "sample.json"),
                          "--set", f"training.checkpoint_dir={tmp / 'checkpoints'}",
                          "--set", f"data.data_dir={tmp / 'sample-data'}"], capture_output=True, text=True, check=True)
    return Path(re.search(r"Run directory: (\S+)", out.stdout).group(1))


def replay(run: Path, tmp: Path, days: int) -> tuple[str, Path, str]:
    """Log `days` days of signals and fill their outcomes; (db url, universe csv, provider)."""
    from marketgpt.serve.db import open_db
    from marketgpt.serve.log import log_signals
    from marketgpt.serve.outcomes import fill_outcomes
    from marketgpt.signals import compute_signals

    universe = tmp / "universe.csv"
    if (SHARED / "manifest.csv").exists():
        universe.write_text("symbol,category\n" + "".join(f"{s},{c}\n" for s, c in SYMBOLS.items()))
        provider, first = f"files:{SHARED}", "2017-08-01"
    else:
        universe.write_text("symbol,category\nSPX,indices\nIXIC,indices\n")
        provider, first = "sample", "2018-08-01"
    url = f"sqlite:///{tmp / 'log.db'}"
    engine = open_db(url)
    for day in pd.bdate_range(first, periods=days):
        table, forecast = compute_signals(run, None, str(universe), provider, tmp / "cache", f"{day:%Y-%m-%d}",
                                          samples=64)
        log_signals(table, run, *forecast.history, engine=engine)
    fill_outcomes(engine=engine)
    return url, universe, provider


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def hammer(base: str, method: str, path: str, body, clients: int, requests: int) -> dict:
    latencies, errors = [], 0
    queue = iter(range(requests))

    async def client():
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            for _ in queue:
                start = time.perf_counter()
                try:
                    answer = await http.request(method, path, json=body)
                    ok = answer.status_code < 300
                except httpx.TransportError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"requests": requests, "errors": errors, "requests_per_s": round(requests / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a finished run directory (default: train configs/sample.json)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000, help="requests per read endpoint")
    parser.add_argument("--forecasts", type=int, default=64, help="requests to POST /v1/forecast")
    parser.add_argument("--days", type=int, default=20, help="days of signals replayed into the log")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="marketgpt-api-load-"))
    run = Path(args.run) if args.run else trained_run(tmp)
    url, universe, provider = replay(run, tmp, args.days)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "marketgpt.cli", "serve", "--db", url, "--run", str(run),
                               "--universe", str(universe), "--provider", provider, "--data-dir", str(tmp / "cache"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MARKETGPT_API_TOKEN": "bench"})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        first = next(iter(SYMBOLS)) if provider != "sample" else "SPX"
        plan = [("health", "GET", "/health", None, args.requests),
                ("assets", "GET", "/v1/assets", None, args.requests),
                ("signals", "GET", "/v1/signals", None, args.requests),
                ("signals_filtered", "GET", f"/v1/signals?symbol={first}&horizon=1d", None, args.requests),
                ("history", "GET", f"/v1/signals/history?symbol={first}", None, args.requests),
                ("fan", "GET", f"/v1/fan?symbol={first}", None, args.requests),
                ("monitor", "GET", "/v1/monitor", None, args.requests),
                ("forecast", "POST", "/v1/forecast", {"symbol": first, "horizon": 5, "samples": 64}, args.forecasts)]
        results = {}
        for name, method, path, body, n in plan:
            results[name] = asyncio.run(hammer(base, method, path, body, args.clients, n))
        floor = results["health"]["p50_ms"]
        for r in results.values():
            r["p50_vs_health"] = round(r["p50_ms"] / floor, 2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{args.clients} clients on 127.0.0.1, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")
    print(f"{'endpoint':<18}{'requests':>9}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p50/health':>11}")
    for name, r in results.items():
        print(f"{name:<18}{r['requests']:>9}{r['errors']:>8}{r['requests_per_s']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r['p50_vs_health']:>11}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"clients": args.clients, "cpu_count": os.cpu_count(), "load1": os.getloadavg()[0], "results": results,
           "signals_days": args.days, "data": provider.split(":")[0]}
    (RESULTS / "api_load.json").write_text(json.dumps(out, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
