"""Forecast skill of the next-day close-return density against GARCH(1,1)-t and a Gaussian random walk, on the
test split, with the calibrated close head beside the previous default (the same trained model at T = 1).

Protocol: every daily series of a folder laid out like ../shared/data (`<category>/<SYMBOL>.csv.gz` plus
manifest.csv; the intraday files left out) through the files provider, bad rows dropped, the global 70/15/15 time
split, the tokenizer fitted on the training period. One model of the shapes the skill figures were first measured
at (vocab 256, context 128, d_model 192, 4 layers, 4 heads, d_ff 768: configs/sample.json otherwise; lr 2e-3) is
trained with the trainer; its end fits the close temperature T on the val split (calibration.py). Both variants are
scored on the test split by the code of `marketgpt evaluate` (score_model + summarize): the previous default
(close_temperature 1, what every run was before calibration) and the calibrated model. The two share weights,
rows and baselines, so their difference is the calibration alone, measured side by side.

Figures per variant: the share of assets with >= 100 test days (and a GARCH-t baseline) whose mean NLL beats
GARCH-t's; mean NLL skill (nats/day) and CRPS skill against GARCH-t and RW with Diebold-Mariano p-values; coverage
of the central 50% and 80% intervals and the PIT histogram, overall and per category. PIT flatness: the largest
|share - 0.1| of the 10 bins in units of the 95% band 1.96 sqrt(0.09 / n) of independent days (days of one date
are correlated across assets, so the true band is wider). The goals of the skill target are checked in `goals`.

Run: `python bench/skill.py [--data FOLDER] [--out FILE] [--epochs N] [--steps N] [--quick]`. `--quick`: two
assets per category (the longest), 2 epochs of at most 30 steps, to check that the protocol runs.

Measured on the shared 2-core CPU (2.35M parameters; times depend on the load of the other users):
- `--quick` (14 series, 48k candles, 2 x 16 steps): 3.0 minutes at load ~5; T = 1.22; NLL skill vs GARCH-t
  -0.137 before and -0.149 after; cover 80% 0.702 -> 0.719.
- all 281 series, 4 epochs x 100 steps: 2.3 minutes at load ~1.5 (15.6 at load ~6); T = 1.014; NLL skill vs
  GARCH-t -0.0420 -> -0.0422 (DM p 1e-7), beats GARCH-t on 51% of the 39 assets with >= 100 test days, cover
  80/50 0.795/0.525 -> 0.796/0.523; per category cover 80 crypto 0.76, FX 0.93, US stocks 0.74, EU stocks 0.83.
  A temperature per category: NLL skill -0.0329, but cover 50 0.409 (crypto T = 2.3: cover 50 0.50 -> 0.32).
- 3 epochs x 60 steps: T = 0.957, NLL skill -0.0466 -> -0.0465.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, RESULTS, case_config, describe, load1, machine  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
SHAPES = {"model.vocab_size": 256, "model.context_length": 128, "model.d_model": 192, "model.num_layers": 4,
          "model.num_heads": 4, "model.d_ff": 768, "training.learning_rate": 2e-3}
MIN_DAYS = 100          # assets counted in the share that beats GARCH-t
MIN_CATEGORY_DAYS = 1000  # categories whose coverage the goals check


def universe_csv(data: Path, folder: Path, per_category: int | None) -> tuple[Path, int]:
    """A universe CSV of the folder's daily series (its manifest, intraday left out); with per_category, only the
    longest that many series of each category."""
    import pandas as pd

    manifest = pd.read_csv(data / "manifest.csv")
    daily = manifest[manifest.category != "intraday"]
    if per_category:
        daily = daily.sort_values(["category", "rows", "symbol"], ascending=[True, False, True])
        daily = daily.groupby("category", sort=True).head(per_category)
    path = folder / "universe.csv"
    daily[["symbol", "category"]].to_csv(path, index=False)
    return path, len(daily)


def pit_band_units(hist, n: int) -> float | None:
    if not hist or not n:
        return None
    return float(max(abs(h - 0.1) for h in hist) / (1.96 * math.sqrt(0.09 / n)))


def block_figures(block: dict) -> dict:
    """One group's figures (overall or a category) from a summarize() return block."""
    m = block["model"]
    out = {"n": block["n"], "nll": m["nll"], "crps": m["crps"], "coverage_50": m["coverage_50"],
           "coverage_80": m["coverage_80"], "pit_histogram": m["pit_histogram"],
           "pit_max_dev_in_band": pit_band_units(m["pit_histogram"], block["n"])}
    for b in ("garch_t", "garch_t_expanding", "random_walk"):
        dm = block["dm"][f"vs_{b}"]
        out[f"vs_{b}"] = {"n": block[b]["n"], "nll_skill": block["skill"][f"nll_vs_{b}"],
                          "crps_skill": block["skill"][f"crps_vs_{b}"], "dm_statistic": dm["statistic"],
                          "dm_p": dm["p_value"]}
    return out


def figures(results: dict) -> dict:
    ret = results["returns"]
    head = results["headline"]
    out = {}
    for b in ("garch_t", "garch_t_expanding"):
        big = [a[f"beats_{b}_nll"] for a in ret["per_asset"].values()
               if a["n"] >= MIN_DAYS and a.get(f"beats_{b}_nll") is not None]
        out |= {f"assets_min_days_with_{b}": len(big),
                f"share_beating_{b}_min_days": float(np.mean(big)) if big else None,
                f"assets_with_{b}": head.get(f"assets_with_{b}"),
                f"share_beating_{b}_all": head.get(f"share_beating_{b}_nll")}
    return {**out, "overall": block_figures(ret["overall"]),
            "per_category": {c: block_figures(b) for c, b in ret["per_category"].items()}}


def goals(f: dict) -> dict:
    def in_band(b):
        return 0.77 <= b["coverage_80"] <= 0.83 and 0.47 <= b["coverage_50"] <= 0.53

    o = f["overall"]
    g = o["vs_garch_t"]
    share = f["share_beating_garch_t_min_days"]
    cats = {c: b for c, b in f["per_category"].items() if b["n"] >= MIN_CATEGORY_DAYS}
    out = {"share_beating_garch_t_at_least_0.6": share is not None and share >= 0.6,
           "nll_skill_positive_dm_p_below_0.05": bool(g["nll_skill"] is not None and g["nll_skill"] > 0
                                                      and g["dm_statistic"] < 0 and g["dm_p"] < 0.05),
           "coverage_in_band_overall": in_band(o),
           "coverage_in_band_every_category": all(in_band(b) for b in cats.values()),
           "categories_checked": sorted(cats),
           "pit_flat_overall": o["pit_max_dev_in_band"] is not None and o["pit_max_dev_in_band"] <= 1}
    out["all_met"] = all(v for k, v in out.items() if k != "categories_checked")
    return out


def category_temperatures(model, store, T: int, global_t: float, min_targets: int = 1000) -> dict:
    """A close temperature per category, each fitted on that category's val targets alone (the global T where a
    category has fewer than min_targets): the per-category lever, measured here, not a default."""
    from marketgpt.calibration import close_logits, fit_temperature
    from marketgpt.dataset import make_windows

    model.close_temperature = 1.0
    val = make_windows(store, "val", T)
    cats = np.asarray(store.category_ids)[val[:, 3]]
    out = {}
    for c, name in enumerate(store.category_names):
        logits, targets = close_logits(model, store, val[cats == c], T, 64) if (cats == c).any() else ([], [])
        out[name] = fit_temperature(logits, targets)["close_temperature"] if len(targets) >= min_targets else global_t
    return out


def score_by_category(model, store, windows, T: int, density, returns, temps: dict) -> dict:
    """score_model's output with each category's windows scored at its own close temperature, in row order."""
    from marketgpt.evaluate import score_model

    cats = np.asarray(store.category_ids)[windows[:, 3]]
    parts = []
    for c, name in enumerate(store.category_names):
        if (cats == c).any():
            model.close_temperature = temps[name]
            parts.append(score_model(model, store, windows[cats == c], T, density, returns, 64))
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(merged["row"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="folder laid out like ../shared/data (default: it)")
    ap.add_argument("--out", type=Path, default=RESULTS / "skill.json", help="result file (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; --quick 2)")
    ap.add_argument("--steps", type=int, default=None,
                    help="at most this many steps per epoch (default 0 = every window once; --quick 30)")
    ap.add_argument("--quick", action="store_true", help="two series per category and a few steps: a check")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 8)
    steps = args.steps if args.steps is not None else (30 if args.quick else 0)
    if not (args.data / "manifest.csv").exists():
        print(f"{args.data}: no manifest.csv (expected <category>/<SYMBOL>.csv.gz plus manifest.csv)", file=sys.stderr)
        return 2

    from marketgpt.density import close_density
    from marketgpt.dataset import make_windows
    from marketgpt.evaluate import score_model, summarize
    from marketgpt.evaluate.scoring import json_safe
    from marketgpt.run import load_run
    from marketgpt.train import train

    mach = machine(torch.device("cpu"))
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']} (includes this process)", flush=True)
    started = time.time()
    quiet = lambda *a, **k: None   # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        universe, n_series = universe_csv(args.data, Path(tmp), 2 if args.quick else None)
        overrides = [f"data.universe={universe}", f"data.provider=files:{args.data.resolve()}",
                     f"data.data_dir={Path(tmp) / 'cache'}", "data.on_bad_rows=drop",
                     f"training.checkpoint_dir={tmp}", f"training.seed={args.seed}", "training.evaluate=false",
                     "training.calibrate=true", f"training.epochs={epochs}", f"training.max_steps_per_epoch={steps}",
                     *(f"{k}={v}" for k, v in SHAPES.items())]
        cfg = case_config("sample", overrides)
        run_dir = train(cfg, run_dir=Path(tmp) / "run", log=lambda m: print(m, flush=True) if (
            m.startswith(("Epoch", "Val", "Calibrated", "Parameters", "Train windows"))) else None)
        train_s = time.time() - started
        calibration = json.loads((run_dir / "calibration.json").read_text())
        log = json.loads((run_dir / "training_log.json").read_text())
        cfg, tok, store, model, epoch = load_run(run_dir, "cpu")
        T = cfg.model.context_length
        windows = make_windows(store, "test", T)
        returns = np.asarray(store.returns)
        variants, seconds = {}, {}
        per_category = category_temperatures(model, store, T, calibration["close_temperature"])
        for name, t in (("previous_default", 1.0), ("calibrated", calibration["close_temperature"]),
                        ("per_category_temperature", per_category)):
            t0 = time.time()
            if isinstance(t, dict):
                scores = score_by_category(model, store, windows, T, close_density(tok), returns, t)
            else:
                model.close_temperature = t
                scores = score_model(model, store, windows, T, close_density(tok), returns, 64)
            variants[name] = json_safe(figures(summarize(store, scores, returns, "test", cfg.model.vocab_size,
                                                         tok.channels, quiet)))
            variants[name]["close_temperature"] = t
            variants[name]["goals"] = goals(variants[name])
            seconds[name] = round(time.time() - t0, 1)
        n_assets, n_candles = len(store.symbols), int(len(store.tokens))
        params = int(sum(p.numel() for p in model.parameters()))
    total_s = time.time() - started
    for name, v in variants.items():
        o, g = v["overall"], v["overall"]["vs_garch_t"]
        t = v["close_temperature"]
        t = ", ".join(f"{c} {x:.3f}" for c, x in t.items()) if isinstance(t, dict) else f"{t:.3f}"
        print(f"{name} (T = {t}): NLL skill vs GARCH-t {g['nll_skill']:+.4f} "
              f"(DM p {g['dm_p']:.3g}), CRPS skill {g['crps_skill']:+.4f}; vs RW {o['vs_random_walk']['nll_skill']:+.4f}; "
              f"share >= {MIN_DAYS} days beating GARCH-t {v['share_beating_garch_t_min_days']} of "
              f"{v['assets_min_days_with_garch_t']}; vs expanding GARCH-t "
              f"{o['vs_garch_t_expanding']['nll_skill']:+.4f} (DM p {o['vs_garch_t_expanding']['dm_p']:.3g}), share "
              f"{v['share_beating_garch_t_expanding_min_days']} of {v['assets_min_days_with_garch_t_expanding']}; "
              f"coverage 80% {o['coverage_80']:.3f}, 50% {o['coverage_50']:.3f}; "
              f"PIT max deviation {o['pit_max_dev_in_band']:.1f} bands; goals met: {v['goals']['all_met']}", flush=True)
    result = {"benchmark": "skill", "machine": mach, "quick": args.quick,
              "data": f"{n_assets} daily series of {args.data}, {n_candles:,} candles"
                      + (" (--quick: the 2 longest per category)" if args.quick else ""),
              "series_in_universe": n_series, "config": "configs/sample.json with " + ", ".join(
                  f"{k.split('.')[1]} {v}" for k, v in SHAPES.items()),
              "parameters": params, "epochs": epochs, "max_steps_per_epoch": steps, "best_epoch": epoch,
              "epochs_run": len(log["epochs"]), "best_val_loss": log["best_val_loss"], "calibration": calibration,
              "seconds": {"train_and_calibrate": round(train_s, 1), "score": seconds, "total": round(total_s, 1)},
              "variants": variants,
              "summary": {"target": "calibrated: share >= 0.6, NLL skill > 0 at DM p < 0.05, coverage 80/50 in "
                                    "[0.77, 0.83]/[0.47, 0.53], PIT flat",
                          "met": variants["calibrated"]["goals"]["all_met"]}}
    mach["load1_end"] = load1()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(result), indent=2) + "\n")
    print(f"{total_s / 60:.1f} minutes; load average now {mach['load1_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
