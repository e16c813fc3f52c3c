"""Forecast skill of the next-day close-return density against GARCH(1,1)-t and a Gaussian random walk, on the
test split: the previous default (today's tokenizer and model, at T = 1 and calibrated) beside the scale lever
(features over a past-only EWMA volatility, tokenizer_scale.py), trained at the same size and budget in one run.

Protocol: every daily series of a folder laid out like ../shared/data (`<category>/<SYMBOL>.csv.gz` plus
manifest.csv; the intraday files left out) through the files provider, bad rows dropped, the global 70/15/15 time
split, the tokenizer fitted on the training period. Models of the shapes the skill figures were first measured
at (vocab 256, context 128, d_model 192, 4 layers, 4 heads, d_ff 768: configs/sample.json otherwise; lr 2e-3) are
trained with the trainer, whose end fits the close temperature T on the val split (calibration.py): one with
model.scale_lambda 0 (the previous default) and one per EWMA decay of --scale-lambdas. The scaled run with the
lowest val NLL of the raw close return (calibrated) is the one chosen; it is kept (`kept`) only if that val NLL
beats the previous default's. Test is scored once per kept configuration by the code of `marketgpt evaluate`
(score_model + summarize; a scaled run's density carries the Jacobian, so its NLL is in nats of the raw return,
comparable with GARCH-t's): the previous default at T = 1 and calibrated, and the chosen scaled run, calibrated.
They share rows and baselines, so their difference is the lever, measured side by side.

Figures per variant: the share of assets with >= 100 test days (and a GARCH-t baseline) whose mean NLL beats
GARCH-t's; mean NLL skill (nats/day) and CRPS skill against GARCH-t and RW with Diebold-Mariano p-values; coverage
of the central 50% and 80% intervals and the PIT histogram, overall and per category. PIT flatness: the largest
|share - 0.1| of the 10 bins in units of the 95% band 1.96 sqrt(0.09 / n) of independent days (days of one date
are correlated across assets, so the true band is wider). The goals of the skill target are checked in `goals`.

Run: `python bench/skill.py [--data FOLDER] [--out FILE] [--epochs N] [--steps N] [--scale-lambdas L,..]
[--keep DIR] [--per-category] [--quick]`. `--quick`: two assets per category (the longest), 2 epochs of at most 30
steps, to check that the protocol runs. `--keep DIR`: the runs are trained into DIR and kept; a run already there
is scored again without training. `--per-category`: also a close temperature per category on the previous default.

Measured on the shared 2-core CPU (2.35M parameters; times depend on the load of the other users):
- the scale lever, all 281 series, 4 epochs x 100 steps, lambda 0.94 (RiskMetrics; the only decay trained: 0.97
  was started and stopped for time): 61 minutes at load 3.5-8 (training 30 min the previous default, 22 min the
  scaled run; scoring 9 min). Val (where it was chosen): NLL -2.9858 -> -2.9918, skill vs GARCH-t +0.0030 ->
  +0.0058, share beating GARCH-t 69% -> 71% of 216, cover 80/50 0.814/0.527 -> 0.818/0.531. Test, calibrated
  (T 1.017 / 1.003): NLL skill vs GARCH-t -0.0417 -> -0.0017 (DM on the date means +5.2 -> +6.2, p 2e-7 -> 6e-10:
  still in GARCH-t's favour), vs the expanding-window GARCH-t -0.0510 -> -0.0135; CRPS skill -0.0076 -> -0.0001;
  share beating GARCH-t 51% -> 51% of 39 (expanding: 24% -> 26% of 99); cover 80/50 0.797/0.525 -> 0.834/0.557
  (now too wide); per category skill crypto -0.075 -> -0.015 (73,624 of the 118,481 test days), FX -0.105 ->
  -0.007 (cover 80 0.93 -> 0.82), US stocks -0.068 -> -0.018 (cover 80 0.74 -> 0.82), EU stocks +0.013 -> +0.008;
  PIT max deviation 7.0 -> 10.4 bands (a hump: too few days in the outer deciles, 0.082/0.084).
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
SCALE_LAMBDAS = (0.94,)   # the scale lever's EWMA decays tried by default (RiskMetrics)


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


def train_one(args, tmp: Path, name: str, epochs: int, steps: int, universe: Path, extra: list[str]) -> Path:
    from marketgpt.train import train

    overrides = [f"data.universe={universe}", f"data.provider=files:{args.data.resolve()}",
                 f"data.data_dir={tmp / 'cache'}", "data.on_bad_rows=drop",
                 f"training.checkpoint_dir={tmp}", f"training.seed={args.seed}", "training.evaluate=false",
                 "training.calibrate=true", f"training.epochs={epochs}", f"training.max_steps_per_epoch={steps}",
                 *(f"{k}={v}" for k, v in SHAPES.items()), *extra]
    print(f"--- training {name}", flush=True)
    return train(case_config("sample", overrides), run_dir=tmp / name, log=lambda m: print(m, flush=True) if (
        m.startswith(("Epoch", "Val", "Calibrated", "Parameters", "Train windows"))) else None)


def score_split(run_dir: Path, split: str, temperature) -> dict:
    """figures() of a run on a split at a close temperature (a number, or a dict per category)."""
    from marketgpt.density import close_density
    from marketgpt.dataset import make_windows
    from marketgpt.evaluate import score_model, summarize
    from marketgpt.evaluate.scoring import json_safe
    from marketgpt.run import load_run

    cfg, tok, store, model, _ = load_run(run_dir, "cpu")
    T = cfg.model.context_length
    windows = make_windows(store, split, T)
    returns = np.asarray(store.returns)
    if isinstance(temperature, dict):
        scores = score_by_category(model, store, windows, T, close_density(tok), returns, temperature)
    else:
        model.close_temperature = temperature
        scores = score_model(model, store, windows, T, close_density(tok), returns, 64)
    out = json_safe(figures(summarize(store, scores, returns, split, cfg.model.vocab_size, tok.channels,
                                      lambda *a, **k: None)))
    out["close_temperature"] = temperature
    out["goals"] = goals(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="folder laid out like ../shared/data (default: it)")
    ap.add_argument("--out", type=Path, default=RESULTS / "skill.json", help="result file (default %(default)s)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default 4; --quick 2)")
    ap.add_argument("--steps", type=int, default=None,
                    help="at most this many steps per epoch (default 100; --quick 30)")
    ap.add_argument("--scale-lambdas", default=",".join(map(str, SCALE_LAMBDAS)),
                    help="EWMA decays of the scale lever to train, the best on val kept (default %(default)s)")
    ap.add_argument("--per-category", action="store_true", help="also a close temperature per category")
    ap.add_argument("--quick", action="store_true", help="two series per category and a few steps: a check")
    ap.add_argument("--keep", type=Path, default=None,
                    help="train the runs into this folder and keep them; a run already there (with its calibration) "
                         "is scored, not trained again")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 4)
    steps = args.steps if args.steps is not None else (30 if args.quick else 100)
    lambdas = [float(x) for x in args.scale_lambdas.split(",") if x.strip()]
    if not (args.data / "manifest.csv").exists():
        print(f"{args.data}: no manifest.csv (expected <category>/<SYMBOL>.csv.gz plus manifest.csv)", file=sys.stderr)
        return 2

    from marketgpt.evaluate.scoring import json_safe
    from marketgpt.run import load_run

    mach = machine(torch.device("cpu"))
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']} (includes this process)", flush=True)
    started = time.time()
    seconds, runs = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        universe, n_series = universe_csv(args.data, tmp, 2 if args.quick else None)
        plan = [("previous_default", ["model.scale_lambda=0"])] + [
            (f"scale_{lam:g}", [f"model.scale_lambda={lam}"]) for lam in lambdas]
        for name, extra in plan:
            t0 = time.time()
            run_dir = tmp / name
            reused = (run_dir / "calibration.json").exists()
            if not reused:
                run_dir = train_one(args, tmp, name, epochs, steps, universe, extra)
            calibration = json.loads((run_dir / "calibration.json").read_text())
            log = json.loads((run_dir / "training_log.json").read_text())
            # a kept run's training time is its log's (measured when it was trained), so total counts it too
            seconds[f"train_{name}"] = round(log["elapsed_seconds"] if reused else time.time() - t0, 1)
            runs[name] = {"dir": run_dir, "calibration": calibration, "reused": reused, "best_val_loss": log["best_val_loss"],
                          "epochs_run": len(log["epochs"]), "train_seconds": log.get("elapsed_seconds"),
                          "scale_lambda": float(extra[0].split("=")[1])}
        # choice on val: the calibrated scale run with the lowest val NLL of the raw close return
        val = {}
        for name, r in runs.items():
            t0 = time.time()
            val[name] = score_split(r["dir"], "val", r["calibration"]["close_temperature"])
            seconds[f"val_{name}"] = round(time.time() - t0, 1)
        scaled = [n for n in runs if n != "previous_default"]
        chosen = min(scaled, key=lambda n: val[n]["overall"]["nll"]) if scaled else None
        keep = chosen if chosen and val[chosen]["overall"]["nll"] < val["previous_default"]["overall"]["nll"] else None
        base = runs["previous_default"]
        tests = [("previous_default", "previous_default", 1.0),
                 ("calibrated", "previous_default", base["calibration"]["close_temperature"])]
        if chosen:
            tests.append((chosen, chosen, runs[chosen]["calibration"]["close_temperature"]))
        variants = {}
        for name, run, t in tests:
            t0 = time.time()
            variants[name] = score_split(runs[run]["dir"], "test", t)
            seconds[f"test_{name}"] = round(time.time() - t0, 1)
        if args.per_category:
            _, _, store, model, _ = load_run(base["dir"], "cpu")
            temps = category_temperatures(model, store, SHAPES["model.context_length"],
                                          base["calibration"]["close_temperature"])
            variants["per_category_temperature"] = score_split(base["dir"], "test", temps)
        cfg, tok, store, model, _ = load_run(base["dir"], "cpu")
        n_assets, n_candles = len(store.symbols), int(len(store.tokens))
        params = {n: int(sum(p.numel() for p in load_run(r["dir"], "cpu")[3].parameters())) for n, r in runs.items()}
    wall_s = time.time() - started
    total_s = wall_s + sum(seconds[f"train_{n}"] for n, r in runs.items() if r["reused"])
    for name, v in val.items():
        print(f"val {name}: NLL {v['overall']['nll']:.4f}, skill vs GARCH-t {v['overall']['vs_garch_t']['nll_skill']:+.4f}; "
              f"cover 80/50 {v['overall']['coverage_80']:.3f}/{v['overall']['coverage_50']:.3f}", flush=True)
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
    default = keep or "calibrated"
    result = {"benchmark": "skill", "machine": mach, "quick": args.quick,
              "data": f"{n_assets} daily series of {args.data}, {n_candles:,} candles"
                      + (" (--quick: the 2 longest per category)" if args.quick else ""),
              "series_in_universe": n_series, "config": "configs/sample.json with " + ", ".join(
                  f"{k.split('.')[1]} {v}" for k, v in SHAPES.items()),
              "parameters": params, "epochs": epochs, "max_steps_per_epoch": steps,
              "runs": {n: {k: v for k, v in r.items() if k != "dir"} for n, r in runs.items()},
              "seconds": {**seconds, "this_invocation": round(wall_s, 1), "total": round(total_s, 1)},
              "val": val, "chosen_on_val": chosen, "kept": keep, "variants": variants,
              "summary": {"target": "share >= 0.6, NLL skill > 0 at DM p < 0.05, coverage 80/50 in "
                                    "[0.77, 0.83]/[0.47, 0.53], PIT flat",
                          "default": default, "met": variants[default]["goals"]["all_met"]}}
    mach["load1_end"] = load1()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(result), indent=2) + "\n")
    print(f"{total_s / 60:.1f} minutes; load average now {mach['load1_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
