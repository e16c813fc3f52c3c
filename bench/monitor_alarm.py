"""False alarms and detection delay of the monitor's alarm (serve/alarm.py) on the daily series of ../shared/data,
and the calibration of its thresholds by simulation.

Every daily series with candles from 2014 or earlier up to 2016-10-31 is copied three times: as it is, and with every
log return from BREAK (2016-05-02) on multiplied by 3 and by 2 (prices after it p -> ref (p / ref)^k, ref the last
close before). A small model (the test suite's shape, 20 epochs of at most 100 steps) is trained on each copy from
2010 to 2016-10-31: the time split puts BREAK in the test split (October 2015 on), so all train on the same candles.
Each run's one-step out-of-sample forecasts (wf_outputs.one_step_tables) are scored against the GARCH(1,1)-t baseline
of serve.baseline (refitted every --refit-every days over the asset's own past), as the monitor scores a logged
stream, and the monitor's assess() gives the status of these streams:
- all assets pooled: one stream, one model-year;
- GROUPS disjoint groups of assets (every GROUPS-th series in category order, so each spans the categories): GROUPS
  model-years of unchanged data for the false-alarm rate, GROUPS delays per break;
- SPY, QQQ and DIA pooled (the test suite's three), and every asset alone (one stream per asset-year).
Delays are trading days from BREAK to the day the alarm tripped, BREAK counted as day 1.

Calibration: the run length of the alarm (the first day any of the three CUSUMs is above h, counted from the end of
the warm-up) on --paths simulated null streams of --days days each: i.i.d. Student-t(5), and stationary block
bootstraps (mean block 5 days, keeping the heavy tails and the day-to-day correlation) of the unchanged pooled daily
loss differences of all assets and of the three indices. ARL: the mean run length, a lower bound where paths never
alarmed within --days.

Run: `python bench/monitor_alarm.py [--max-assets N] [--refit-every 20] [--paths 1000] [--days 6000]`
(writes bench/results/monitor_alarm.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
START, END, BREAK = "2010-01-01", "2016-10-31", "2016-05-02"
CASES = (("unchanged", 1.0), ("x3", 3.0), ("x2", 2.0))
GROUPS = 10
INDICES = ("SPY", "QQQ", "DIA")
THRESHOLDS = (6, 8, 10, 12, 14, 16, 20, 24)


def universe(max_assets: int | None) -> pd.DataFrame:
    m = pd.read_csv(SHARED / "manifest.csv")
    m = m[(m.category != "intraday") & (m.first_date <= "2014-12-31") & (m.last_date >= END)]
    m = m.sort_values(["category", "symbol"])
    if max_assets and max_assets < len(m):      # spread over the categories: every k-th series
        m = m.iloc[np.linspace(0, len(m) - 1, max_assets).round().astype(int)]
    return m[["symbol", "category"]].reset_index(drop=True)


def copy(assets: pd.DataFrame, folder: Path, factor: float) -> None:
    for r in assets.itertuples():
        frame = pd.read_csv(SHARED / r.category / f"{r.symbol}.csv.gz")
        frame = frame[frame.date <= END]
        if factor != 1:
            dates = pd.to_datetime(frame.date)
            ref = frame.close[dates < BREAK].iloc[-1]
            for col in ("open", "high", "low", "close"):
                frame.loc[dates >= BREAK, col] = ref * (frame.loc[dates >= BREAK, col] / ref) ** factor
        (folder / r.category).mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / r.category / f"{r.symbol}.csv", index=False)


def train(tmp: Path, name: str, source: Path, universe_csv: Path) -> Path:
    raw = json.loads((ROOT / "configs" / "sample.json").read_text())
    raw["name"] = name
    raw["model"].update(vocab_size=32, context_length=32, d_model=32, num_layers=2, num_heads=2, d_ff=64)
    raw["training"].update(batch_size=16, epochs=20, max_steps_per_epoch=100, checkpoint_every=5, keep_checkpoints=1,
                           checkpoint_dir=str(tmp / name / "checkpoints"), evaluate=False)
    raw["data"].update(universe=str(universe_csv), provider=f"files:{source}", start=START, end=END,
                       data_dir=str(tmp / name / "data"))
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(raw))
    out = subprocess.run([sys.executable, "-m", "marketgpt.cli", "train", str(config)], capture_output=True, text=True,
                         check=True)
    import re

    return Path(re.search(r"Run directory: (\S+)", out.stdout).group(1))


def streams(run: Path, source: Path, assets: pd.DataFrame, refit_every: int) -> dict[str, pd.DataFrame]:
    """Per asset, the rows the monitor reads from a log (monitor.read_scored's columns) for the run's test days."""
    from marketgpt.serve.baseline import COLUMNS, garch_baseline, symbol_seed
    from marketgpt.wf_outputs import one_step_tables

    forecast, _ = one_step_tables(run, "cpu")
    out = {}
    for r in assets.itertuples():
        rows = forecast[forecast.symbol == r.symbol].sort_values("as_of")
        if rows.empty:
            continue
        frame = pd.read_csv(source / r.category / f"{r.symbol}.csv")
        dates, close = pd.to_datetime(frame.date), frame.close.to_numpy(np.float64)
        returns = np.diff(np.log(close))
        at = np.searchsorted(dates, rows.as_of)
        prob_up, q = garch_baseline(returns, at - 1, [1], symbol_seed(r.symbol), refit_every=refit_every)
        rows = rows.assign(model=run.name, model_version="bench", horizon="1d", bars=1, realised_date=rows.date,
                           realised_log_return=np.log(close[at + 1] / close[at]), median_log_return=rows.return_q50,
                           baseline="garch_t")
        rows[COLUMNS] = np.column_stack([prob_up[:, 0], q[:, 0]])
        out[r.symbol] = rows
    return out


def delay(tripped: str | None) -> float | None:
    """Trading days from BREAK to the trip, BREAK day 1; None when it never tripped, <= 0 when it tripped before."""
    if tripped is None:
        return None
    days = len(pd.bdate_range(BREAK, tripped))
    return float(days if days else -len(pd.bdate_range(tripped, BREAK)) + 1)


def outcome(entry: dict) -> dict:
    m = entry["metrics"]
    return {"status": entry["status"], "warn_on": m.get("warn_on"), "retrain_on": m.get("retrain_on"),
            "warn_delay": delay(m.get("warn_on")), "retrain_delay": delay(m.get("retrain_on")),
            "cusum_max": m.get("cusum_max")}


def measure(group: dict[str, pd.DataFrame], assets: pd.DataFrame) -> dict:
    """The monitor's verdict on the pools of one case."""
    from marketgpt.serve.monitor import assess

    symbols = [s for s in assets.symbol if s in group]
    pools = {"all": symbols, "indices3": [s for s in INDICES if s in group]}
    pools.update({f"group{g}": symbols[g::GROUPS] for g in range(GROUPS)})
    out = {name: outcome(assess(pd.concat([group[s] for s in members]))) for name, members in pools.items() if members}
    out["single"] = {s: outcome(assess(group[s])) for s in symbols}
    return out


def pooled_daily(group: dict[str, pd.DataFrame], symbols) -> np.ndarray:
    from marketgpt.serve import alarm as A
    from marketgpt.serve.monitor import BASE_Q, MODEL_Q

    rows = pd.concat([group[s] for s in symbols if s in group])
    e = A.loss_difference(rows[MODEL_Q].to_numpy(), rows[BASE_Q].to_numpy(), rows.realised_log_return.to_numpy())
    return A.pool_days(e, pd.to_datetime(rows.realised_date).to_numpy())[1]


def block_bootstrap(x: np.ndarray, paths: int, days: int, block: float, rng) -> np.ndarray:
    """Stationary bootstrap (Politis & Romano): blocks of geometric length (mean `block`) from random starts,
    wrapping around the end."""
    out = np.empty((paths, days), dtype=np.int64)
    for p in range(paths):
        idx, filled = [], 0
        while filled < days:
            length = int(rng.geometric(1.0 / block))
            idx.append((rng.integers(len(x)) + np.arange(length)) % len(x))
            filled += length
        out[p] = np.concatenate(idx)[:days]
    return x[out]


def calibrate(nulls: dict[str, np.ndarray], thresholds) -> dict:
    from marketgpt.serve import alarm as A

    out = {}
    for name, x in nulls.items():
        s = A.cusum(x)
        worst = np.maximum.reduce([s[side] for side in A.SIDES])[:, A.WARMUP_DAYS:]
        horizon = worst.shape[1]
        rows = []
        for h in thresholds:
            hit = worst > h
            run = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, horizon)
            rows.append({"threshold": h, "arl": float(run.mean()), "censored": float(np.mean(~hit.any(axis=1))),
                         "p_250": float(np.mean(hit[:, :250].any(axis=1))),
                         "p_1000": float(np.mean(hit[:, :1000].any(axis=1)))})
        out[name] = rows
        print(f"calibration on {name}: " + "; ".join(f"h {r['threshold']}: ARL {'>=' if r['censored'] else ''}"
                                                     f"{r['arl']:.0f}, P(250 d) {r['p_250']:.2f}" for r in rows),
              flush=True)
    return out


def finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def summary(result: dict) -> dict:
    """The numbers the README and the results table state."""
    out = {}
    for name, pools in result.items():
        groups = [v for k, v in pools.items() if k.startswith("group")]
        single = list(pools["single"].values())
        row = {"all": pools["all"], "indices3": pools.get("indices3"), "groups": len(groups), "assets": len(single),
               "groups_warn": sum(g["warn_on"] is not None for g in groups),
               "groups_retrain": sum(g["retrain_on"] is not None for g in groups),
               "single_warn_share": float(np.mean([s["warn_on"] is not None for s in single])),
               "single_retrain_share": float(np.mean([s["retrain_on"] is not None for s in single]))}
        if name != "unchanged":
            after = [g for g in groups if g["warn_delay"] is None or g["warn_delay"] > 0]
            row["groups_early"] = len(groups) - len(after)       # a false alarm before the break
            for key in ("warn_delay", "retrain_delay"):
                d = np.array([np.inf if g[key] is None else g[key] for g in after])
                row[f"groups_{key}_median"] = finite(np.median(d)) if len(d) else None
                row[f"groups_{key}_max"] = finite(d.max()) if len(d) else None
            row["single_warn_within_20"] = float(np.mean([0 < (s["warn_delay"] or 99) <= 20 for s in single]))
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-assets", type=int, default=None)
    parser.add_argument("--refit-every", type=int, default=20)
    parser.add_argument("--paths", type=int, default=1000)
    parser.add_argument("--days", type=int, default=6000)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch
    from common import machine, write_result

    from marketgpt.serve import alarm as A

    t0, host = time.time(), machine(torch.device("cpu"))
    assets = universe(args.max_assets)
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    universe_csv = tmp / "universe.csv"
    assets.to_csv(universe_csv, index=False)
    groups = {}
    for name, factor in CASES:
        source = tmp / f"src_{name}"
        copy(assets, source, factor)
        run = train(tmp, name, source, universe_csv)
        groups[name] = streams(run, source, assets, args.refit_every)
        print(f"{name}: {len(groups[name])} streams, {time.time() - t0:.0f} s", flush=True)
    result = {name: measure(group, assets) for name, group in groups.items()}
    facts = summary(result)
    for name, row in facts.items():
        print(f"{name}: {json.dumps({k: v for k, v in row.items()})}", flush=True)
    rng = np.random.default_rng(0)
    nulls = {"student_t5": rng.standard_t(5, (args.paths, args.days))}
    for name, symbols in (("bootstrap_all", list(assets.symbol)), ("bootstrap_indices3", INDICES)):
        nulls[name] = block_bootstrap(pooled_daily(groups["unchanged"], symbols), args.paths, args.days, 5.0, rng)
    calibration = calibrate(nulls, THRESHOLDS)
    payload = {"assets": len(assets), "break": BREAK, "refit_every": args.refit_every, "groups": GROUPS,
               "alarm": {"warmup": A.WARMUP_DAYS, "reference": A.REFERENCE_DAYS, "drift": A.DRIFT,
                         "spread_drift": A.SPREAD_DRIFT, "clip": A.CLIP, "warn_at": A.WARN_AT,
                         "retrain_at": A.RETRAIN_AT},
               "summary": facts, "calibration": {"paths": args.paths, "days": args.days, "block": 5.0,
                                                 "nulls": calibration},
               "pools": {name: {k: v for k, v in pools.items() if k != "single"} for name, pools in result.items()},
               "seconds": round(time.time() - t0), "machine": host}
    print(f"wrote {write_result('monitor_alarm', payload)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
