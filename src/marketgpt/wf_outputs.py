"""What a walk-forward leaves behind: per fold, the one-step out-of-sample forecasts and scores; over all folds, the
stitched `oos.parquet`, `scores.parquet`, the summary (skill against GARCH-t per fold and pooled) and its plot.

One-step rows come straight from the close head's density (CloseDensity: quantiles by its inverse CDF, P(up) =
1 - F(0), the mean log return and E[C_{t+1}/C_t] in closed form), so horizon 1 carries no Monte Carlo error; the
longer horizons come from the forecaster's sample paths (backtest.data.oos_forecasts, cached per fold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MarketGPTError

SCORE_COLUMNS = ("y", "model_nll", "model_crps", "model_pit", "p_up")


def one_step_tables(run_dir, device=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(forecast rows, score rows) of the one-step density on every target of the run's test split."""
    from .data import SPLITS
    from .dataset import load_data_candles, make_windows
    from .density import close_density
    from .evaluate.scoring import return_baselines, score_model
    from .forecast import DEFAULT_LEVELS, level_name
    from .run import load_run

    run_dir = Path(run_dir)
    cfg, tokenizer, store, model, _ = load_run(run_dir, device)
    T = cfg.model.context_length
    returns = np.asarray(store.returns)
    density = close_density(tokenizer)
    s = score_model(model, store, make_windows(store, "test", T), T, density, returns, cfg.training.batch_size,
                    levels=DEFAULT_LEVELS)
    rows = s["row"]
    asset = np.asarray(store.asset)[rows]
    symbols = np.asarray(store.symbols, dtype=object)[asset]
    categories = np.asarray(store.categories, dtype=object)[asset]
    dates = pd.to_datetime(np.asarray(store.dates)[rows])
    as_of = pd.to_datetime(np.asarray(store.dates)[rows - 1])   # a test row is never an asset's first row
    _, candles = load_data_candles(cfg.data)
    close = candles.set_index(["symbol", "date"]).close
    last_close = close.reindex(pd.MultiIndex.from_arrays([symbols, as_of])).to_numpy(np.float64)
    forecast = pd.DataFrame({"symbol": symbols, "as_of": as_of, "date": dates, "horizon": 1, "model": run_dir.name,
                             "last_close": last_close, "mean": last_close * s["gross"],
                             "median": last_close * np.exp(s["quantiles"][:, DEFAULT_LEVELS.index(0.5)]),
                             "prob_up": s["p_up"], "mean_return": s["mean"]})
    for k, q in enumerate(DEFAULT_LEVELS):
        forecast[f"close_{level_name(q)}"] = last_close * np.exp(s["quantiles"][:, k])
    for k, q in enumerate(DEFAULT_LEVELS):
        forecast[f"return_{level_name(q)}"] = s["quantiles"][:, k]
    base, _, _ = return_baselines(store, returns, SPLITS.index("test"))
    scores = pd.DataFrame({"symbol": symbols, "category": categories, "as_of": as_of, "date": dates,
                           "y": returns[rows], "model_nll": s["ret_nll"], "model_crps": s["ret_crps"],
                           "model_pit": s["pit"], "p_up": s["p_up"], **{k: v[rows] for k, v in base.items()}})
    return forecast, scores


def fold_tables(run_dir, horizons, samples: int, log=print, device=None, out_dir=None) -> None:
    """OUT_DIR/oos.parquet (one-step density rows + sample-path rows of the longer horizons) and scores.parquet of
    the run (or ensemble) in run_dir; OUT_DIR defaults to run_dir."""
    from .backtest.data import oos_forecasts
    from .forecast import write_table

    run_dir = Path(run_dir)
    forecast, scores = one_step_tables(run_dir, device)
    parts = [forecast.assign(source="density")]
    longer = [int(h) for h in horizons if int(h) > 1]
    if longer:
        paths = oos_forecasts(run_dir, longer, samples, every=1, split="test", device=device, log=log)
        parts.append(paths.assign(source="paths"))
    out_dir = Path(out_dir or run_dir)
    write_table(pd.concat(parts, ignore_index=True), out_dir / "oos.parquet")
    write_table(scores, out_dir / "scores.parquet")
    log(f"{run_dir.name}: {len(forecast)} one-step forecasts" + (f" and {len(parts[1])} rows of horizons {longer}"
                                                                 if longer else "") + f" in {out_dir / 'oos.parquet'}")


# --- stitching and the summary --------------------------------------------------------------------------------

def _fold_row(name: str, scores: pd.DataFrame) -> dict:
    from .evaluate.scoring import return_block

    block = return_block(scores)
    dm = block["dm"].get("vs_garch_t", {})
    return {"fold": name, "first_day": f"{scores.date.min():%Y-%m-%d}", "last_day": f"{scores.date.max():%Y-%m-%d}",
            "assets": int(scores.symbol.nunique()), "n": block["n"], "nll": block["model"]["nll"],
            "garch_t_nll": block["garch_t"]["nll"], "skill_vs_garch_t": block["skill"]["nll_vs_garch_t"],
            "dm_statistic": dm.get("statistic"), "dm_p": dm.get("p_value"),
            "skill_vs_random_walk": block["skill"]["nll_vs_random_walk"],
            "crps_skill_vs_garch_t": block["skill"]["crps_vs_garch_t"],
            "coverage_50": block["model"]["coverage_50"], "coverage_80": block["model"]["coverage_80"],
            "hit_rate": block["direction"]["hit_rate"]}


def stitch(out, log=print) -> dict:
    """Stitch the finished folds' tables into WF_DIR/oos.parquet and scores.parquet, write the summary (table,
    plot, walkforward.json) and return it. A fold that is not done is named and left out."""
    from .checkpoint import write_json
    from .evaluate.scoring import json_safe
    from .forecast import write_table
    from .config import read_json
    from .walkforward import PLAN, fold_status, read_plan

    out = Path(out)
    plan, folds, _ = read_plan(out)
    done = [f for f in folds if fold_status(out / f.name) == "done"]
    missing = [f.name for f in folds if f not in done]
    if not done:
        raise MarketGPTError(f"{out}: no fold has finished yet ({', '.join(missing)} pending); run the folds first")
    oos = pd.concat([pd.read_parquet(out / f.name / "oos.parquet").assign(fold=f.index) for f in done],
                    ignore_index=True)
    scores = pd.concat([pd.read_parquet(out / f.name / "scores.parquet").assign(fold=f.index) for f in done],
                       ignore_index=True)
    write_table(oos.sort_values(["as_of", "symbol", "horizon"], kind="stable"), out / "oos.parquet")
    write_table(scores, out / "scores.parquet")
    rows = [_fold_row(f.name, scores[scores.fold == f.index]) for f in done] + [_fold_row("all folds", scores)]
    table = pd.DataFrame(rows)
    summary = {"folds": rows, "missing_folds": missing, "oos_rows": int(len(oos))}
    plan["status"] = {f.name: fold_status(out / f.name) for f in folds}
    if plan["settings"].get("warm_start"):
        plan["warm_start_from"] = {f.name: read_json(out / f.name / "fold.json", "fold status").get("warm_start_from")
                                   for f in done}
    plan["summary"] = json_safe(summary)
    write_json(plan, out / PLAN)
    plot = plot_skill(table, out / "skill_by_fold.png")
    (out / "summary.md").write_text(summary_markdown(table, plan["settings"], missing, plot.name))
    log(format_summary(table))
    if missing:
        log(f"not stitched (not finished): {', '.join(missing)}")
    log(f"wrote {out / 'oos.parquet'} ({len(oos)} rows), {out / 'summary.md'} and {plot}")
    return summary


def format_summary(table: pd.DataFrame) -> str:
    cols = ["fold", "first_day", "last_day", "assets", "n", "nll", "garch_t_nll", "skill_vs_garch_t", "dm_p",
            "coverage_50", "coverage_80"]
    return table[cols].to_string(index=False, float_format=lambda x: f"{x:.4f}")


def summary_markdown(table: pd.DataFrame, settings: dict, missing: list[str], plot: str) -> str:
    head = (f"# Walk-forward: {settings['folds']} folds, {settings['mode']}, {settings['test_days']} test days, "
            f"{settings['val_days']} validation days, embargo {settings['embargo_days']} days\n\n"
            "One-step NLL of the close log return (nats/day) on each fold's test days; skill = baseline NLL minus the "
            "model's (positive: the model is better), Diebold-Mariano p-value on the daily mean loss difference "
            "against GARCH(1,1)-t; coverage of the model's central 50% and 80% intervals.\n\n")
    cols = ["fold", "first_day", "last_day", "assets", "n", "nll", "garch_t_nll", "skill_vs_garch_t", "dm_p",
            "skill_vs_random_walk", "coverage_50", "coverage_80", "hit_rate"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table[cols].iterrows():
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r) + " |")
    tail = f"\n\nNot finished, left out: {', '.join(missing)}\n" if missing else "\n"
    return head + "\n".join(lines) + tail + f"\n![skill by fold]({plot})\n"


def plot_skill(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(table)), 4))
    skill = table.skill_vs_garch_t.to_numpy(np.float64)
    colours = ["#2a7" if s > 0 else "#c44" for s in skill]
    colours[-1] = "#333"
    ax.bar(table.fold, skill, color=colours)
    ax.axhline(0, color="black", linewidth=0.8)
    for x, (s, p) in enumerate(zip(skill, table.dm_p)):
        if np.isfinite(s):
            ax.annotate(f"p={p:.2f}" if p is not None and np.isfinite(p) else "", (x, s), ha="center",
                        va="bottom" if s >= 0 else "top", fontsize=8)
    ax.set_ylabel("NLL skill vs GARCH(1,1)-t (nats/day)")
    ax.set_title("Walk-forward: one-step skill per fold (positive: model better)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path

