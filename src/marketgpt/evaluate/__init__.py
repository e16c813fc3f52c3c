"""Honest evaluation of a run: per-channel token metrics against unigram and persistence, and the close-to-close
return's one-step predictive density against a Gaussian random walk and GARCH(1,1)-t, with plots and a report.

Python API: `evaluate_run`, `compare_runs`, `format_compare`, `headline`, `write_report`, `make_plots`, and the
building blocks `load_run`, `close_density`, `score_model`, `summarize`.
Command line: `marketgpt evaluate RUN_DIR [--split test|val]`, `marketgpt compare RUN_DIR...`.

Definitions (also written into every report)
- Close-to-close return y = ln(C_t / C_{t-1}) (the tokenizer's close feature), true value from the candles.
- Model density of y: the close head's probabilities (close is predicted first, from the context only), spread
  uniformly over each bin's width; TAIL_RULE for the two open-ended outer bins.
- NLL: -log density of y, nats per day, in log-return units for every forecaster (lower is better).
  CRPS: in log-return units (lower is better).
- Skill against a baseline b, on the days where b exists: NLL skill = mean NLL_b - mean NLL_model (nats per
  day, > 0: the model is better); CRPS skill = 1 - mean CRPS_model / mean CRPS_b (> 0: the model is better).
- Diebold-Mariano on the per-day log-score difference d = NLL_model - NLL_b (mean over the group's assets on each
  date, so cross-asset correlation on a day is handled), Newey-West HAC variance, two-sided normal p-value;
  a negative statistic means the model has the lower NLL.
- Direction: "up" when P(y > 0) > 0.5 under the model's density; a hit when that matches y > 0 (a flat day,
  y = 0, counts as not up). Wilson 95% interval; compare with 50% and with "always up" (the share of up days).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import read_json, writable_dir
from ..density import TAIL_RULE, CloseDensity, close_density
from ..errors import MarketGPTError
from ..run import check_run_dir, load_run
from .plots import make_plots
from .report import (CALIBRATION_COLUMNS, CHANNEL_COLUMNS, COMPARE_COLUMNS, CRPS_COLUMNS, NLL_COLUMNS, format_compare,
                     format_value, get_path, group_rows, headline, markdown_table, write_report)
from .scoring import (BASELINES, COVERAGE_LEVELS, DEFAULT_EVERY, DEFAULT_HORIZONS, DEFAULT_SAMPLES, PIT_BINS, SPLITS,
                      check_split, json_safe, results_name, return_baselines, return_block, score_model, summarize,
                      token_baselines)

__all__ = ["BASELINES", "CALIBRATION_COLUMNS", "CHANNEL_COLUMNS", "COMPARE_COLUMNS", "COVERAGE_LEVELS", "CRPS_COLUMNS",
           "DEFAULT_EVERY", "DEFAULT_HORIZONS", "DEFAULT_SAMPLES", "NLL_COLUMNS", "PIT_BINS", "SPLITS", "TAIL_RULE",
           "CloseDensity", "check_run_dir", "close_density", "compare_runs", "evaluate_run", "format_compare", "format_value", "get_path", "group_rows", "headline",
           "load_run", "make_plots", "markdown_table", "results_name", "return_baselines", "return_block",
           "score_model", "summarize", "token_baselines", "write_report"]


def evaluate_run(run_dir, split: str = "test", log=print, device=None, batch_size: int | None = None,
                 plots: bool = True, horizons=None, every: int = DEFAULT_EVERY, horizon_samples: int = DEFAULT_SAMPLES,
                 seed: int = 0, universe: str | None = None, provider: str | None = None, data_dir=None,
                 start=None, end=None, out_dir=None, calibrate: bool = False) -> dict:
    """Score a run's best model on its test (or val) split; write `<split>_results.json`, the plots and the report
    (`report.md`; `val_report.md` for val) into the run directory, and return the results dict.

    horizons (e.g. (1, 5, 21)): also forecast from origins every `every` days of the period, `horizon_samples`
    paths each, scored against a random walk, GARCH-t and a bootstrap (the results' `horizons` block).
    calibrate: first fit the close temperature on the run's val split (calibration.py); without it the run's
    calibration.json is used if it has one.
    universe (with provider, data_dir, start, end): score another universe or period instead (sources.py); the
    files go to out_dir (default RUN_DIR/eval_<universe name>)."""
    import numpy as np
    import torch

    from ..checkpoint import write_json
    from ..dataset import make_windows
    from ..forecast import Forecaster
    from .horizons import horizon_definitions, horizon_report_lines, plot_horizon_skill
    from .multi_horizon import check_options, evaluate_horizons
    from .sources import other_source, run_source

    split = check_split(split)
    if horizons:
        check_options(every, horizon_samples)
    run_dir = check_run_dir(run_dir)
    started = time.time()
    from ..calibration import calibrate_run, read_calibration

    if calibrate:
        calibrate_run(run_dir, device, log)
    cfg, tokenizer, store, model, epoch = load_run(run_dir, device)
    forecaster = Forecaster(run_dir, cfg, tokenizer, store, model)
    scorer, source = model, None
    if universe is not None:
        split = "test"
        source, scorer = other_source(forecaster, universe, provider or cfg.data.provider,
                                      data_dir if data_dir is not None else (cfg.data.data_dir or None), start, end)
        store = source.store
        out = Path(out_dir) if out_dir else run_dir / f"eval_{Path(str(universe)).stem}"
    else:
        out = run_dir
    writable_dir(out, "evaluation results")     # fail before the work, not after it
    returns = np.asarray(store.returns)
    T = cfg.model.context_length
    windows = make_windows(store, split, T)
    bs = batch_size or cfg.training.batch_size
    log(f"Evaluating {run_dir} on {split}" + (f" of {universe}" if universe else "") + f": {len(windows)} windows")
    scores = score_model(scorer, store, windows, T, close_density(tokenizer), returns, bs)
    log(f"scored the model in {time.time() - started:.1f}s")
    results = summarize(store, scores, returns, split, cfg.model.vocab_size, tokenizer.channels, log)
    if hasattr(model, "members"):     # an ensemble directory: each member on the same rows
        from ..ensemble import member_table
        from .sources import IdMap

        members = member_table(model, scores, lambda m: score_model(
            m if scorer is model else IdMap(m, scorer.asset_ids, scorer.category_ids), store, windows, T,
            close_density(tokenizer), returns, bs), log)
    meta = {"name": cfg.name, "run_dir": str(run_dir), "best_epoch": epoch,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "device": str(next(model.parameters()).device), "torch": torch.__version__,
            "weights": "best_model.pt (the epoch with the lowest val loss)",
            "close_temperature": [m.close_temperature for m in model.members] if hasattr(model, "members")
            else model.close_temperature,
            "close_width": None if hasattr(model, "members") else read_calibration(run_dir)[1],
            "close_bins": {"vocab_size": cfg.model.vocab_size,
                           "tail_scale": [float(s) for s in close_density(tokenizer).tail_scale]},
            "data": source.description if source else {"data": "the run's own", "split": split},
            "output_dir": str(out),
            "seconds": None}
    results = {**{k: results[k] for k in (f"{split}_loss", f"{split}_accuracy")}, **meta,
               **{k: v for k, v in results.items() if k not in (f"{split}_loss", f"{split}_accuracy")}}
    prefix = "" if split == "test" else "val_"
    if hasattr(model, "members"):
        results["ensemble"] = members
    garch = None
    if horizons:
        source = source or run_source(cfg, store, split)
        block, garch, info = evaluate_horizons(forecaster, source.candles, source.categories, source.start,
                                               source.end, horizons, every, horizon_samples, seed, log=log)
        results["horizons"] = block
        results["horizons_info"] = {**info, "every": every, "samples": horizon_samples, "seed": seed,
                                    "garch_t": {s: {k: v for k, v in i.items() if k != "fits"} | {
                                        "reasons": sorted({f["unusable"] for f in i["fits"] if "unusable" in f})}
                                        for s, i in garch.items()}}
        results["definitions"].update(horizon_definitions())
    if plots:
        results["plots"] = make_plots(results, out, prefix)
        if horizons:
            results["plots"]["horizon_skill"] = plot_horizon_skill(results["horizons"],
                                                                   out / f"{prefix}horizon_skill.png").name
    results["seconds"] = round(time.time() - started, 3)
    results = json_safe(results)
    write_json(results, out / results_name(split))
    sections = horizon_report_lines(results["horizons"], (results.get("plots") or {}).get("horizon_skill"),
                                    garch) if horizons else []
    if hasattr(model, "members"):
        from ..ensemble import format_members

        sections = [f"## Ensemble and members ({members['n']} scored days, close return)", "",
                    format_members(members), "", *sections]
    report = write_report(results, out, f"{prefix}report.md", sections)
    log(f"wrote {out / results_name(split)} and {report}")
    return results


def compare_runs(run_dirs, split: str = "test", evaluate_missing: bool = True, log=print):
    """One row per run (pandas DataFrame): name, run directory, parameters, loss/accuracy, unigram loss, NLL and CRPS
    skill against each baseline, coverage, share of assets beating GARCH-t. Runs without `<split>_results.json` are
    evaluated first (or raise with evaluate_missing=False)."""
    import pandas as pd

    split = check_split(split)
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        path = run_dir / results_name(split)
        if path.exists():
            results = read_json(path, "results file")
        elif not run_dir.is_dir():
            raise MarketGPTError(f"{run_dir}: run directory not found")
        elif evaluate_missing:
            results = evaluate_run(run_dir, split, log=log)
        else:
            raise MarketGPTError(f"{run_dir}: no {path.name}; run `marketgpt evaluate {run_dir}` first")
        row = {"run": run_dir.name}
        for header, p, _ in COMPARE_COLUMNS:
            row[header] = get_path(results, [k.format(split=split) for k in p])
        rows.append(row)
    columns = ["name", "run", *[c[0] for c in COMPARE_COLUMNS[1:]]]
    return pd.DataFrame(rows, columns=columns)


def cmd_evaluate(args) -> int:
    from .multi_horizon import parse_horizons

    if args.universe is None and any(v is not None for v in (args.provider, args.data_dir, args.start, args.end)):
        raise MarketGPTError("--provider, --data-dir, --start and --end go with --universe (evaluation on other data)")
    results = evaluate_run(args.run_dir, args.split, horizons=parse_horizons(args.horizons) if args.horizons else None,
                           every=args.every, horizon_samples=args.samples, seed=args.seed, universe=args.universe,
                           provider=args.provider, data_dir=args.data_dir, start=args.start, end=args.end,
                           out_dir=args.out, calibrate=args.calibrate)
    print(headline(results))
    return 0


def cmd_compare(args) -> int:
    print(format_compare(compare_runs(args.run_dirs, args.split)))
    return 0


def add_commands(sub) -> None:
    """Register this module's subcommands on the `marketgpt` parser."""
    ev = sub.add_parser("evaluate", help="score a run's best model on test (or val) against unigram, persistence, "
                                         "random walk and GARCH(1,1)-t; write results JSON, plots and report.md")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory")
    ev.add_argument("--split", default="test", help="test (default) or val")
    ev.add_argument("--horizons", help="also score forecasts h days ahead, e.g. 1,5,21, from origins in the split")
    ev.add_argument("--every", type=int, default=DEFAULT_EVERY,
                    help=f"days between forecast origins (default {DEFAULT_EVERY})")
    ev.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                    help=f"sample paths per forecast (default {DEFAULT_SAMPLES})")
    ev.add_argument("--seed", type=int, default=0, help="seed of the model's and the baselines' samples")
    ev.add_argument("--universe", help="score another universe CSV (or case) instead of the run's own split; "
                                       "assets the run never saw are zero-shot")
    ev.add_argument("--provider", help="with --universe: its provider (default: the run's)")
    ev.add_argument("--data-dir", help="with --universe: its cache folder (default: the run's)")
    ev.add_argument("--start", help="with --universe: score candles after this date (default: the run's val end); "
                                    "earlier candles are context and baseline history")
    ev.add_argument("--end", help="with --universe: last date scored")
    ev.add_argument("--out", help="with --universe: output folder (default RUN_DIR/eval_<universe name>)")
    ev.add_argument("--calibrate", action="store_true",
                    help="first fit the close head's temperature on the val split and write RUN_DIR/calibration.json "
                         "(training does this at its end; for runs trained before it)")
    ev.set_defaults(func=cmd_evaluate)
    cmp = sub.add_parser("compare", help="one table of several runs' results (evaluating runs that have none)")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    cmp.add_argument("--split", default="test", help="test (default) or val")
    cmp.set_defaults(func=cmd_compare)
