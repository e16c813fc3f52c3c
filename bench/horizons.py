"""Multi-horizon skill of the configs' default forecaster on the test split: h-day cumulative close returns from its
sample paths against GARCH-t, a Gaussian random walk and a bootstrap of past returns, h = 1, 5, 21 and 42 days.

Protocol: the data, split and run of bench/skill.py's chosen configuration (every daily series of a folder laid out
like ../shared/data, the global 70/15/15 split; scale lambda 0.97 at the skill shapes, 12 x 100 steps, seed 1337,
calibrated on val: T and the widths that pass their check), trained here, or `--run DIR`, a run or ensemble directory
(e.g. one `bench/skill.py --keep DIR` kept). From origins every --every days of the test split, each asset with a
candle on that date is forecast as of it (its candles up to the origin only) with --samples paths of the longest
horizon, and every horizon's cumulative close return is scored (the code of `marketgpt evaluate --horizons`:
evaluate/multi_horizon.py): CRPS, Brier score of P(up), coverage of the central 50 / 80 / 95% intervals, and the
CRPS skill against each baseline with a Diebold-Mariano test over the origins (h - 1 lags: overlapping outcomes).
The baselines are sampled at the same origins from the same past, so the skills are ratios measured side by side.
Nothing is tuned here: the run's settings were chosen on val (bench/skill.py); this scores test once.

Run: `python bench/horizons.py [--data FOLDER] [--out FILE] [--run DIR] [--every N] [--samples N] [--horizons LIST]
[--quick]`. `--quick`: bench/skill.py's quick universe and budget, one origin in 189 days: a check of the pipeline.

Measured (2-core AMD EPYC, torch 2.13.0 CPU, idle; bench/results/horizons.json):
- every 63 days (the default): 18.5 minutes (training 5.3, sampling and baselines 13.2); 25 origins, 2,300
  forecasts at 1 day (2,019 at 42: the last origins have no 42-day outcome). CRPS skill against GARCH-t +0.050 /
  +0.072 / +0.126 / +0.159 at 1 / 5 / 21 / 42 days (DM -2.91 / -2.97 / -2.08 / -2.80), against the random walk
  +0.049 / +0.017 / +0.044 / +0.092 (DM -2.22 / -0.65 / -4.15 / -4.21), against the bootstrap +0.038 / +0.004 /
  +0.061 / +0.098. 80% cover 0.764 / 0.780 / 0.776 / 0.748 against GARCH-t's 0.782 / 0.782 / 0.778 / 0.734 on
  its rows; 50% cover 0.461 / 0.497 / 0.466 / 0.475. Per category the cover swings with the few origins, the
  baselines' with it (crypto at 1 day: the model 0.706, GARCH-t 0.698, the random walk 0.782): one date's assets
  move together, so 25 origins are ~25 independent draws per category, a standard error of ~0.08 on an 80% cover.
- every 126 days: 12.4 minutes, 13 origins: CRPS skill against GARCH-t +0.052 / +0.056 / +0.116 / +0.138 (DM
  -1.90 / -1.22 / -2.27 / -2.75), 80% cover 0.744 / 0.781 / 0.777 / 0.735.
The 1-day skill here (+0.050) is not the next-day figure of bench/skill.py (+0.0048 for the pool, CRPS, all test
days): that one scores the exact density on every test day against GARCH-t fitted on the training period; this one
scores 100 sampled paths at 25 origins against GARCH-t refitted on each asset's history up to the origin.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, describe, finish, machine  # noqa: E402
from skill import SHARED, train_one, universe_csv  # noqa: E402

HORIZONS = (1, 5, 21, 42)
EVERY = 63          # 25 origins over the test split of ../shared/data: 13 minutes of sampling on 2 cores
SAMPLES = 100
BASELINES = ("garch_t", "random_walk", "bootstrap")
COVERAGE = ("coverage_50", "coverage_80", "coverage_95")


def horizon_figures(block: dict) -> dict:
    """One horizon's figures from the horizons block of evaluate_horizons: overall and per category."""
    def group(g: dict) -> dict:
        out = {"n": g["n"], "crps": g["model"]["crps"], "brier": g["model"]["brier"],
               **{c: g["model"][c] for c in COVERAGE}}
        for b in BASELINES:
            dm = g["dm"][f"vs_{b}"]
            out[f"vs_{b}"] = {"n": g[b]["n"], "crps_skill": g["skill"][f"crps_vs_{b}"],
                              "dm_statistic": dm["statistic"], "dm_p": dm["p_value"],
                              **{c: g[b][c] for c in COVERAGE}}
        return out

    return {"overall": group(block["overall"]),
            "per_category": {c: group(g) for c, g in block["per_category"].items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="folder laid out like ../shared/data (default: it)")
    ap.add_argument("--out", type=Path, default=RESULTS / "horizons.json", help="result file (default %(default)s)")
    ap.add_argument("--run", type=Path, default=None,
                    help="score this run or ensemble directory instead of training the chosen configuration")
    ap.add_argument("--horizons", default=",".join(map(str, HORIZONS)), help="days ahead (default %(default)s)")
    ap.add_argument("--every", type=int, default=None, help=f"days between origins (default {EVERY}; --quick 189)")
    ap.add_argument("--samples", type=int, default=SAMPLES, help="paths per asset and origin (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1337, help="training seed (sampling uses seed 0)")
    ap.add_argument("--quick", action="store_true", help="two series per category and a few steps: a check")
    args = ap.parse_args()
    if args.run is None and not (args.data / "manifest.csv").exists():
        print(f"{args.data}: no manifest.csv (expected <category>/<SYMBOL>.csv.gz plus manifest.csv)", file=sys.stderr)
        return 2
    if args.run is not None and not args.run.is_dir():
        print(f"{args.run}: run directory not found", file=sys.stderr)
        return 2

    from marketgpt.errors import MarketGPTError
    from marketgpt.evaluate.multi_horizon import check_options, evaluate_horizons, parse_horizons
    from marketgpt.evaluate.sources import run_source
    from marketgpt.forecast import Forecaster
    from marketgpt.run import load_run

    every = args.every if args.every is not None else (189 if args.quick else EVERY)
    try:
        horizons = parse_horizons(args.horizons)
        check_options(every, args.samples)
    except MarketGPTError as e:
        print(e, file=sys.stderr)
        return 2
    mach = machine(torch.device("cpu"))
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']} (includes this process)", flush=True)
    started = time.time()
    seconds = {}
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run
        if run_dir is None:
            tmp = Path(scratch)
            universe, _ = universe_csv(args.data, tmp, 2 if args.quick else None)
            epochs, steps = (2, 30) if args.quick else (12, 100)
            # configs/sample.json's model options (scale 0.97, no calendar: bench/skill.py's choice on val)
            run_dir = train_one(args, tmp, "default", epochs, steps, universe, [])
            seconds["train"] = round(time.time() - started, 1)
        cfg, tok, store, model, _ = load_run(run_dir, "cpu")
        source = run_source(cfg, store, "test")
        t0 = time.time()
        block, garch, info = evaluate_horizons(Forecaster(run_dir, cfg, tok, store, model), source.candles,
                                               source.categories, source.start, source.end, horizons, every,
                                               args.samples, 0, log=lambda m: print(m, flush=True))
        seconds["horizons"] = round(time.time() - t0, 1)
        run_text = str(args.run) if args.run else (f"scale {cfg.model.scale_lambda:g} at bench/skill.py's shapes, "
                                                   f"{epochs} x {steps} steps, seed {args.seed}, calibrated on val")
        calibration = json.loads((run_dir / "calibration.json").read_text()) if (
            run_dir / "calibration.json").exists() else None
    wall_s = time.time() - started
    figures = {str(h): horizon_figures(block[str(h)]) for h in horizons}
    for h, f in figures.items():
        o = f["overall"]
        skills = ", ".join(f"{b} {o[f'vs_{b}']['crps_skill']:+.4f} (DM {o[f'vs_{b}']['dm_statistic']:+.2f})"
                           for b in BASELINES)
        print(f"h = {h}: {o['n']} forecasts; cover 50/80/95 {o['coverage_50']:.3f}/{o['coverage_80']:.3f}/"
              f"{o['coverage_95']:.3f} (GARCH-t {o['vs_garch_t']['coverage_50']:.3f}/"
              f"{o['vs_garch_t']['coverage_80']:.3f}/{o['vs_garch_t']['coverage_95']:.3f}); CRPS skill vs {skills}",
              flush=True)
    result = {"benchmark": "horizons", "machine": mach, "quick": args.quick, "run": run_text,
              "calibration": calibration, "horizons": list(horizons), "every": every, "samples": args.samples,
              "origins": info["origins"], "paths": info["paths"], "assets": len(garch),
              "garch_t_fits": {k: sum(i[k] for i in garch.values()) for k in ("origins", "too_short", "unusable_fit")},
              "seconds": {**seconds, "total": round(wall_s, 1)}, "figures": figures,
              "summary": {"target": "CRPS skill > 0 against GARCH-t and the random walk at every horizon",
                          "met": all(f["overall"][f"vs_{b}"]["crps_skill"] > 0 for f in figures.values()
                                     for b in ("garch_t", "random_walk"))}}
    return finish("horizons", result, args.out, wall_s)


if __name__ == "__main__":
    sys.exit(main())
