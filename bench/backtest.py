"""The backtest engine against a plain per-day Python loop, on a Case-A-sized panel: 600 assets x 5,000 days.

Two panels: dense (every asset trades every day: the target, >= 50x, is for it) and with gaps (missing bars, late
listings, early ends, mixed 5/7-bar horizons as in a panel of stocks and crypto), where the engine packs each
asset's bars into consecutive rows and back, gathers with poor locality that cost most of its time.

The loop is what an event-driven backtester does: every day, every asset with a bar fills its pending position,
earns its overnight and intraday moves, pays its cost and adds the day's tranche (engine.py's definitions, written
again from them). Both get the same synthetic prices (with missing bars, late listings and early ends, so each
asset's own bar clock matters) and the same tranche weights; the equity curves must agree to 1e-9 (max abs
difference printed), and the engine's speed is the ratio of the two wall times (best of 3 for the engine, one run
of the loop). `bt` (MIT, on PyPI) is not the reference: it fills at closes, charges per share and has no tranches,
so it could not be checked for equality.

Run: `python bench/backtest.py` (writes bench/results/backtest.json).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np

from marketgpt.backtest import engine

ASSETS, DAYS, HORIZON, COST, TARGET = 600, 5000, 5, 0.0007, 50.0


def synthetic(gaps: bool, seed: int = 0):
    """Prices (random walks; with gaps: 1% of bars missing, 30% of assets listed late, 20% ended early), the
    tranche weights of a persistent random signal, and each asset's horizon."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (DAYS, ASSETS)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, (DAYS, ASSETS)))
    gone = np.zeros((DAYS, ASSETS), dtype=bool)
    if gaps:
        gone = rng.random((DAYS, ASSETS)) < 0.01
        listed = rng.integers(0, DAYS // 4, ASSETS) * (rng.random(ASSETS) < 0.3)
        ended = DAYS - rng.integers(0, DAYS // 4, ASSETS) * (rng.random(ASSETS) < 0.2)
        rows = np.arange(DAYS)[:, None]
        gone |= (rows < listed) | (rows >= ended)
        close[gone] = open_[gone] = np.nan
    signal = np.repeat(rng.choice([-1.0, 0.0, 1.0], size=(DAYS // 10, ASSETS)), 10, axis=0)
    weights = engine.equal_weights(np.where(gone, np.nan, signal))
    # one calendar (dense): every asset holds 1w = 5 bars; gaps stand for a mixed panel, where crypto holds 7
    horizon = np.where(rng.random(ASSETS) < 0.8, HORIZON, 7) if gaps else np.full(ASSETS, HORIZON)
    return close, open_, weights, horizon


def loop_backtest(close, open_, weights, horizon, cost):
    """Day by day, asset by asset, in plain Python (open fills)."""
    T, A = close.shape
    C, O, W, H = close.tolist(), open_.tolist(), weights.tolist(), horizon.tolist()
    last = [max((t for t in range(T) if C[t][a] == C[t][a]), default=-1) for a in range(A)]
    tranches = [deque() for _ in range(A)]
    total, pending, held, prev = [0.0] * A, [0.0] * A, [0.0] * A, [None] * A
    equity, e = [], 1.0
    for t in range(T):
        gain_old = gain_new = paid = 0.0
        row_c, row_o, row_w = C[t], O[t], W[t]
        for a in range(A):
            c = row_c[a]
            if c != c:                                   # no bar today
                continue
            new = 0.0 if (t == last[a] and t < T - 1) else pending[a]
            old = held[a]
            paid += cost * abs(new - old)
            if prev[a] is not None:
                o = row_o[a]
                gain_old += old * (o / prev[a] - 1)
                gain_new += new * (c / o - 1)
            held[a], prev[a] = new, c
            q = tranches[a]
            q.append(row_w[a])
            total[a] += row_w[a]
            if len(q) > H[a]:
                total[a] -= q.popleft()
            pending[a] = total[a] / H[a]
        e *= (1 + gain_old) * (1 - paid) * (1 + gain_new)
        equity.append(e)
    return np.array(equity)


def measure(gaps: bool) -> dict:
    close, open_, weights, horizon = synthetic(gaps)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = engine.run(weights, close, open_, horizon, COST, "open")
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    reference = loop_backtest(close, open_, weights, horizon, COST)
    loop_s = time.perf_counter() - t0
    diff = float(np.max(np.abs(result.equity - reference)))
    ratio = loop_s / min(times)
    print(f"{'with gaps' if gaps else 'dense'}: engine {min(times):.3f} s (best of 3), plain loop {loop_s:.1f} s, "
          f"ratio {ratio:.0f}x, max abs difference of the equity curves {diff:.2e}")
    return {"engine_s": round(min(times), 4), "engine_runs_s": [round(t, 4) for t in times], "loop_s": round(loop_s, 3),
            "ratio": round(ratio, 1), "max_abs_equity_diff": diff, "equal": diff < 1e-9,
            "final_equity": float(result.equity[-1]), "missing_share": round(float(np.isnan(close).mean()), 4)}


def main() -> int:
    load_start = round(os.getloadavg()[0], 2)
    dense, gaps = measure(False), measure(True)
    out = {"assets": ASSETS, "days": DAYS, "cells": ASSETS * DAYS, "horizon": "5 bars (dense); 5 bars for 80% of the assets, 7 for 20% (gaps)",
           "fill": "open", "cost": COST, "dense": dense, "gaps": gaps, "ratio": dense["ratio"], "target": TARGET,
           "met": dense["ratio"] >= TARGET, "equal": dense["equal"] and gaps["equal"],
           "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                       "python": platform.python_version(), "numpy": np.__version__, "load1_start": load_start,
                       "load1_end": round(os.getloadavg()[0], 2)}}
    print(f"target >= {TARGET:.0f}x on the dense panel: {'met' if out['met'] else 'NOT met'}")
    path = Path(__file__).resolve().parent / "results" / "backtest.json"
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)
    return 0 if out["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
