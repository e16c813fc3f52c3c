"""False alarms and detection delay of the monitor's alarm (serve/alarm.py) on the daily series of ../shared/data.

Every daily series with candles from 2014 or earlier up to 2016-10-31 is copied twice: as it is, and with every
log return from BREAK (2016-05-02) on multiplied by 3 (prices after it p -> ref (p / ref)^3, ref the last close
before). A small model (the test suite's shape, 20 epochs of at most 100 steps) is trained on each copy from 2010 to
2016-10-31: the time split puts BREAK in the test split (October 2015 on), so both train on the same candles. Each
run's one-step out-of-sample forecasts (wf_outputs.one_step_tables) are scored per asset against the GARCH(1,1)-t
baseline of serve.baseline (refitted every --refit-every days over the asset's own past), exactly as the monitor
scores a logged stream: one stream per asset, so the rates are per asset-year of monitoring.

Printed: for thresholds h of the CUSUM, the share of unchanged streams that cross h anywhere in their test year
(false alarms), and on the x3 streams the share that cross it within 20 / 60 trading days of BREAK and the median
delay; then the statuses the monitor gives with the thresholds in serve/alarm.py (including calibration warnings).

Run: `python bench/monitor_alarm.py [--max-assets N] [--refit-every 20]` (writes bench/results/monitor_alarm.json).
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
THRESHOLDS = (4, 5, 6, 8, 10, 12, 15, 20)


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


def cusum_of(rows: pd.DataFrame):
    from marketgpt.serve import alarm as A
    from marketgpt.serve.monitor import BASE_Q, MODEL_Q

    e = A.loss_difference(rows[MODEL_Q].to_numpy(), rows[BASE_Q].to_numpy(), rows.realised_log_return.to_numpy())
    daily = pd.Series(e, index=pd.to_datetime(rows.realised_date)).groupby(level=0).mean()
    return daily.index, A.cusum(daily.to_numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-assets", type=int, default=None)
    parser.add_argument("--refit-every", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from marketgpt.serve import alarm as A
    from marketgpt.serve.monitor import assess

    t0 = time.time()
    assets = universe(args.max_assets)
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    universe_csv = tmp / "universe.csv"
    assets.to_csv(universe_csv, index=False)
    result = {}
    for name, factor in (("unchanged", 1.0), ("x3", 3.0)):
        source = tmp / f"src_{name}"
        copy(assets, source, factor)
        run = train(tmp, name, source, universe_csv)
        result[name] = streams(run, source, assets, args.refit_every)
        print(f"{name}: {len(result[name])} streams, {time.time() - t0:.0f} s", flush=True)
    rows = []
    quiet = {s: cusum_of(r) for s, r in result["unchanged"].items()}
    loud = {s: cusum_of(r) for s, r in result["x3"].items()}
    for h in THRESHOLDS:
        false = np.mean([(s > h).any() for _, s in quiet.values()])
        delays, early = [], 0
        for days, s in loud.values():
            after = days >= BREAK
            if (s[~after] > h).any():
                early += 1
            crossed = np.flatnonzero(s[after] > h)
            delays.append(crossed[0] + 1 if len(crossed) else np.inf)
        delays = np.asarray(delays, dtype=float)
        rows.append({"threshold": h, "false_alarm_share": float(false), "x3_before_break": early / len(loud),
                     "detected_20d": float(np.mean(delays <= 20)), "detected_60d": float(np.mean(delays <= 60)),
                     "median_delay_days": float(np.median(delays))})
    table = pd.DataFrame(rows)
    print(f"\n{len(quiet)} unchanged and {len(loud)} x3 streams; test days {min(d[0] for d, _ in quiet.values()):%Y-%m-%d} "
          f"to {max(d[-1] for d, _ in quiet.values()):%Y-%m-%d}; CUSUM drift {A.DRIFT}, clip {A.CLIP}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    statuses = {}
    for name, group in result.items():
        got = [assess(r) for r in group.values()]
        statuses[name] = pd.Series([g["status"] for g in got]).value_counts().to_dict()
        calib = sum("miscalibrated" in g["reason"] for g in got)
        print(f"monitor statuses on {name} (WARN above {A.WARN_AT:g}, RETRAIN above {A.RETRAIN_AT:g}): "
              f"{statuses[name]}; {calib} with a calibration warning in the reason")
    pooled = {name: assess(pd.concat(group.values())) for name, group in result.items()}
    for name, p in pooled.items():
        print(f"all assets pooled, {name}: {p['status']} {p['tripped_on']}: {p['reason']}")
    out = ROOT / "bench" / "results" / "monitor_alarm.json"
    out.write_text(json.dumps({"assets": len(assets), "refit_every": args.refit_every, "drift": A.DRIFT,
                               "clip": A.CLIP, "table": rows, "statuses": statuses,
                               "pooled": {k: {"status": v["status"], "tripped_on": v["tripped_on"]}
                                          for k, v in pooled.items()},
                               "seconds": round(time.time() - t0), "load1": os.getloadavg()[0]}, indent=2) + "\n")
    print(f"wrote {out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
