"""Load a Case-A-sized cache (600 assets x 5,000 days of generated candles) through the data layer.

Prints wall time and peak memory, against a plain `pandas.read_parquet` + concat of the same files
measured in the same run, and writes bench/results/data_load.json.
"""

from __future__ import annotations

import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from marketgpt.data import CandleCache, Provenance, load_candles

ASSETS, DAYS = 600, 5000


def generate(cache: CandleCache) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2000-01-03", periods=DAYS)
    rows = []
    for i in range(ASSETS):
        close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, DAYS)))
        open_ = close * np.exp(rng.normal(0, 0.005, DAYS))
        high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.01, DAYS)))
        low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.01, DAYS)))
        frame = pd.DataFrame({"date": dates, "open": open_, "high": high, "low": low, "close": close,
                              "volume": rng.integers(1e5, 1e7, DAYS).astype(float)})
        symbol = f"S{i:03d}"
        cache.write(symbol, frame, Provenance("bench", symbol, "", "", "generated"))
        rows.append({"symbol": symbol, "category": "us_stocks", "name": "", "yfinance": symbol, "ccxt": ""})
    return pd.DataFrame(rows)


def plain_load(tmp: str, universe: pd.DataFrame) -> pd.DataFrame:
    cache = CandleCache(tmp, "bench")
    return pd.concat([pd.read_parquet(cache.path(s)) for s in universe.symbol], ignore_index=True)


def marketgpt_load(tmp: str, universe: pd.DataFrame) -> pd.DataFrame:
    return load_candles(universe, "bench", tmp)


def _child(name: str, tmp: str, universe: pd.DataFrame, queue) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    frame = globals()[name](tmp, universe)
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    queue.put((len(frame), seconds, peak))


def measure(name: str, tmp: str, universe: pd.DataFrame) -> tuple[int, float, int]:
    """Run a loader in a fresh process: wall time and the peak resident memory it added."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, tmp, universe, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = CandleCache(tmp, "bench")
        universe = generate(cache)
        n_raw, t_raw, m_raw = measure("plain_load", tmp, universe)
        n_ours, t_ours, m_ours = measure("marketgpt_load", tmp, universe)
    assert n_ours == n_raw == ASSETS * DAYS
    result = {"assets": ASSETS, "days": DAYS, "candles": n_ours, "seconds": round(t_ours, 3),
              "peak_mb": round(m_ours / 2**20, 1), "reference_seconds": round(t_raw, 3),
              "reference_peak_mb": round(m_raw / 2**20, 1), "time_ratio": round(t_ours / t_raw, 2),
              "memory_ratio": round(m_ours / m_raw, 2),
              "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}"}
    print(f"load_candles: {n_ours:,} candles of {ASSETS} assets in {t_ours:.2f} s, peak RSS +{result['peak_mb']} MB")
    print(f"plain read_parquet + concat: {t_raw:.2f} s, peak RSS +{result['reference_peak_mb']} MB")
    print(f"ratio ours/plain: time {result['time_ratio']}x, memory {result['memory_ratio']}x")
    out = Path(__file__).parent / "results" / "data_load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
