"""The model monitor: skill and calibration of the logged signals against their outcomes, per model, model version
and horizon, with an alarm when the model loses ground to the GARCH(1,1)-t baseline logged beside it.

Statuses, from the pooled alarm alone (serve/alarm.py: three CUSUMs on the daily cross-sectional mean of the loss
difference over the stream's assets, thresholds calibrated to a stated false-alarm rate):
- OK: no CUSUM crossed WARN_AT.
- WARN: one crossed WARN_AT: the model lost ground to the baseline, or the baseline lost ground to it, or the loss
  difference swings far more than before: the returns changed regime. Look at it.
- RETRAIN: one crossed RETRAIN_AT.
- NO DATA: no signal of that model and horizon has both an outcome and a logged baseline yet.
The reason names the CUSUM and the day it crossed; it also names the calibration tests on the last WINDOW_DAYS days
(Kupiec on the 50% and 90% intervals, KS on the PIT) that fail at p < CALIBRATION_P, as detail that does not change
the status (pooled over 223 assets they failed on the unchanged series too), and the metrics list the assets with
the highest loss difference over the window.
What is scored, and how the alarm works and its thresholds were measured: serve/alarm.py.

Python: `monitor_report(url)` returns the JSON-ready report (what `marketgpt monitor --json` prints).
"""

from __future__ import annotations

import sys

from .alarm import CALIBRATION_P, RETRAIN_AT, WARMUP_DAYS, WARN_AT, WINDOW_DAYS

#: what each CUSUM's crossing says
WHY = {"up": "the model lost ground to GARCH-t (the pooled loss difference drifted up)",
       "down": "GARCH-t lost ground to the model (the pooled loss difference fell): the returns changed regime",
       "spread": "the pooled loss difference to GARCH-t swings far more than it did: the returns changed regime"}

STATUSES = ("NO DATA", "OK", "WARN", "RETRAIN")
QUANTILES = ("q05", "q25", "q75", "q95")
MODEL_Q = [f"return_{q}" for q in QUANTILES]
BASE_Q = [f"baseline_return_{q}" for q in QUANTILES]


def read_scored(engine, run=None, horizon=None):
    """The logged signals that have an outcome, with their baseline columns, optionally of one run (its folder
    name or path) and horizon name, in realised-date order."""
    from pathlib import Path

    import pandas as pd
    from sqlalchemy import or_, select

    from .db import ForecastRun, Outcome, Signal

    columns = [ForecastRun.model, Signal.model_version, Signal.horizon, Signal.bars, Signal.symbol, Signal.as_of,
               Signal.prob_up, Signal.median_log_return, *[getattr(Signal, c) for c in MODEL_Q],
               Signal.baseline, Signal.baseline_prob_up, *[getattr(Signal, c) for c in BASE_Q],
               Outcome.realised_date, Outcome.realised_log_return]
    query = (select(*columns).join(ForecastRun, Signal.run_id == ForecastRun.id)
             .join(Outcome, Outcome.signal_id == Signal.id))
    if run is not None:
        query = query.where(or_(ForecastRun.model == str(run), ForecastRun.run_path == str(Path(run).resolve())))
    if horizon is not None:
        query = query.where(Signal.horizon == str(horizon))
    query = query.order_by(ForecastRun.model, Signal.model_version, Signal.horizon, Outcome.realised_date,
                           Signal.symbol)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=[c.key for c in columns])


def _day(value) -> str | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else f"{pd.Timestamp(value):%Y-%m-%d}"


def _window_calibration(inside50, inside90, pit) -> dict:
    from .alarm import kupiec, ks_uniform

    return {"kupiec50_p": kupiec(inside50, 0.5), "kupiec90_p": kupiec(inside90, 0.9), "pit_ks_p": ks_uniform(pit)}


def _failing(p: dict) -> list[str]:
    return [k for k, v in p.items() if v is not None and v < CALIBRATION_P]


def assess(rows) -> dict:
    """The monitor's entry for one stream: the rows (read_scored's columns) of one model version and horizon."""
    import numpy as np
    import pandas as pd

    from . import alarm as A

    rows = rows.sort_values(["realised_date", "symbol"], kind="stable")
    rows = rows[np.isfinite(rows[MODEL_Q].to_numpy(np.float64)).all(axis=1)]
    first = rows.iloc[0] if len(rows) else None
    entry = {"n": int(len(rows)), "first_day": _day(rows.realised_date.min()) if len(rows) else None,
             "last_day": _day(rows.realised_date.max()) if len(rows) else None, "tripped_on": None}
    if first is not None:
        entry = {"model": str(first.model), "model_version": str(first.model_version),
                 "horizon": str(first.horizon), **entry}
    y = rows.realised_log_return.to_numpy(np.float64)
    mq = rows[MODEL_Q].to_numpy(np.float64)
    bq = rows[BASE_Q].to_numpy(np.float64)
    has_b = np.isfinite(bq).all(axis=1) & np.isfinite(rows.baseline_prob_up.to_numpy(np.float64))
    days = pd.to_datetime(rows.realised_date).to_numpy()
    if not has_b.any():
        return {**entry, "status": "NO DATA", "reason": "no signal with an outcome has a logged baseline",
                "metrics": {}}
    e = np.full(len(rows), np.nan)
    e[has_b] = A.loss_difference(mq[has_b], bq[has_b], y[has_b])
    pooled_days, daily = A.pool_days(e, days)
    x, ends = A.blocks(daily, int(rows.bars.min()))
    s = A.cusum(x)
    alarm = A.trips(s)
    block_days = pooled_days[ends]

    unique_days = np.unique(days)
    in_window = days >= unique_days[max(0, len(unique_days) - WINDOW_DAYS)]
    w = in_window & has_b
    qs_m, qs_b = A.quantile_score(mq, y), np.full(len(y), np.nan)
    qs_b[has_b] = A.quantile_score(bq[has_b], y[has_b])
    inside50 = (y >= mq[:, 1]) & (y <= mq[:, 2])
    inside90 = (y >= mq[:, 0]) & (y <= mq[:, 3])
    median = rows.median_log_return.to_numpy(np.float64)
    with_median = np.isfinite(median)
    levels = (0.05, 0.25, 0.5, 0.75, 0.95)
    q5 = np.column_stack([mq[:, :2], np.where(with_median, median, mq[:, 1]), mq[:, 2:]])
    pit = A.randomized_pit(q5, levels, y)
    if not with_median.all():        # without the median the 25..75% bin is one bin: redraw those
        pit[~with_median] = A.randomized_pit(mq[~with_median], A.LEVELS, y[~with_median], seed=1)
    calibration = _window_calibration(inside50[in_window], inside90[in_window], pit[in_window])
    mean = (lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else None)
    metrics = {
        "window_days": int(min(WINDOW_DAYS, len(unique_days))), "window_n": int(in_window.sum()),
        "baseline_n": int(has_b.sum()),
        "qs_model": mean(qs_m[w]), "qs_baseline": mean(qs_b[w]),
        "skill_qs": 1.0 - np.nanmean(qs_m[w]) / np.nanmean(qs_b[w]) if w.any() else None,
        "skill_qs_all": 1.0 - np.nanmean(qs_m[has_b]) / np.nanmean(qs_b[has_b]),
        "coverage50": mean(inside50[in_window].astype(float)),
        "coverage50_baseline": mean(((y >= bq[:, 1]) & (y <= bq[:, 2]))[w].astype(float)),
        "coverage90": mean(inside90[in_window].astype(float)),
        "coverage90_baseline": mean(((y >= bq[:, 0]) & (y <= bq[:, 3]))[w].astype(float)),
        **calibration,
        "brier": A.brier(rows.prob_up.to_numpy(np.float64)[in_window], y[in_window]),
        "brier_baseline": A.brier(rows.baseline_prob_up.to_numpy(np.float64)[w], y[w]),
        **{f"cusum_{side}": float(v[-1]) if len(v) else 0.0 for side, v in s.items()},
        "cusum_max": float(max(v.max(initial=0.0) for v in s.values())),
        "warn_at": WARN_AT, "retrain_at": RETRAIN_AT, "pooled_days": int(len(x)),
        **{f"{k}_on": _day(block_days[v[0]]) if v else None for k, v in alarm.items()},
        "worst_assets": _worst_assets(rows.symbol.to_numpy()[w], e[w]),
    }
    skill = metrics["skill_qs"]
    tail = (f"QS skill vs GARCH-t {skill:+.3f} over the last {metrics['window_days']} days"
            if skill is not None else "no baseline in the window")
    now = "CUSUM up/down/spread {:.1f}/{:.1f}/{:.1f}".format(*(metrics[f"cusum_{side}"] for side in A.SIDES))
    status, tripped = "OK", None
    for name, h in (("RETRAIN", RETRAIN_AT), ("WARN", WARN_AT)):
        if alarm[name.lower()] is not None:
            index, side = alarm[name.lower()]
            status, tripped = name, block_days[index]
            reason = f"{WHY[side]}: CUSUM {side} above {h:g} on {_day(tripped)} (now {now})"
            break
    else:
        reason = ("warming up: " if len(x) < WARMUP_DAYS else "") + \
                 f"{now} (WARN above {WARN_AT:g}, RETRAIN above {RETRAIN_AT:g})"
    failing = _failing(calibration)
    if failing:
        names = {"kupiec50_p": f"50% coverage {metrics['coverage50']:.2f} (Kupiec p {calibration['kupiec50_p']:.1g})",
                 "kupiec90_p": f"90% coverage {metrics['coverage90']:.2f} (Kupiec p {calibration['kupiec90_p']:.1g})",
                 "pit_ks_p": f"PIT not uniform (KS p {calibration['pit_ks_p']:.1g})"}
        reason += "; miscalibrated over the last {} days: {}".format(metrics["window_days"],
                                                                     ", ".join(names[k] for k in failing))
    return {**entry, "status": status, "reason": f"{reason}; {tail}", "tripped_on": _day(tripped),
            "metrics": metrics}


def _worst_assets(symbols, e, top: int = 3) -> list[dict]:
    """Detail beside the pooled alarm: the assets with the highest mean loss difference over the window."""
    import pandas as pd

    means = pd.Series(e).groupby(symbols).mean().dropna().sort_values(ascending=False, kind="stable")
    return [{"symbol": str(k), "loss_difference": float(v)} for k, v in means.head(top).items()]


def monitor_report(url=None, data_dir=None, engine=None, run=None, horizon=None) -> dict:
    """{"status": the worst over the streams (NO DATA when there is none), "models": one entry per model, model
    version and horizon (assess)}: plain JSON types, None for a missing number. `run`: a run's folder name or path;
    `horizon`: a horizon name (1d, 1w, ...)."""
    from ..evaluate.scoring import json_safe
    from ..signals import parse_horizon_names
    from .db import open_db

    if horizon is not None:
        names = parse_horizon_names(horizon)
        if len(names) != 1:
            from ..errors import MarketGPTError

            raise MarketGPTError(f"--horizon takes one horizon name (1d, 1w, 2w, 1m, 2m), got {horizon!r}")
        horizon = names[0]
    # the default log of a mistyped --data-dir must not be created empty and reported as NO DATA; a --db URL
    # names its log itself (a new one is an empty log)
    engine = engine or open_db(url, data_dir, create=url is not None)
    rows = read_scored(engine, run, horizon)
    models = [assess(group) for _, group in rows.groupby(["model", "model_version", "horizon"], sort=True)]
    order = {"1d": 0, "1w": 1, "2w": 2, "1m": 3, "2m": 4}
    models.sort(key=lambda m: (m["model"], m["model_version"], order.get(m["horizon"], 9)))
    status = max((m["status"] for m in models), key=STATUSES.index, default="NO DATA")
    return json_safe({"status": status, "models": models})


def format_report(report: dict) -> str:
    if not report["models"]:
        return "NO DATA: no logged signal has an outcome yet (marketgpt signals --log, then marketgpt outcomes)"
    lines = [f"{'model':<28} {'version':<8} {'hor':>3} {'n':>6} {'last day':>10} {'status':<7} {'tripped':>10}  "
             f"{'skill':>6} {'cov50':>5} {'cov90':>5} {'brier':>6}  reason"]
    for m in report["models"]:
        k = m["metrics"]

        def num(key, fmt):
            return format(k[key], fmt) if k.get(key) is not None else "-"
        lines.append(f"{m['model'][:28]:<28} {m['model_version'][:8]:<8} {m['horizon']:>3} {m['n']:>6} "
                     f"{m['last_day'] or '-':>10} {m['status']:<7} {m['tripped_on'] or '-':>10}  "
                     f"{num('skill_qs', '+.3f'):>6} {num('coverage50', '.2f'):>5} {num('coverage90', '.2f'):>5} "
                     f"{num('brier', '.4f'):>6}  {m['reason']}")
    lines.append(f"overall: {report['status']}")
    return "\n".join(lines)


def cmd_monitor(args) -> int:
    import json

    report = monitor_report(args.db, args.data_dir, run=args.run, horizon=args.horizon)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    sys.stdout.flush()
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("monitor", help="skill and calibration of the logged signals against GARCH-t, with an "
                                       "OK / WARN / RETRAIN alarm per model and horizon")
    p.add_argument("--db", help="database URL (default: sqlite:///<data-dir>/marketgpt.db; "
                                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)")
    p.add_argument("--data-dir", help="folder of the default SQLite log (default: $MARKETGPT_DATA or ./data)")
    p.add_argument("--run", help="only this run (its folder name or path)")
    p.add_argument("--horizon", help="only this horizon (1d, 1w, 2w, 1m, 2m)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (what GET /v1/monitor serves)")
    p.set_defaults(func=cmd_monitor)
