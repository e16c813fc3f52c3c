"""PNG plots of an evaluation: training curves, calibration, per-asset skill."""

from __future__ import annotations

from pathlib import Path

from ..config import read_json
from .report import _split_of
from .scoring import COVERAGE_LEVELS, PIT_BINS


def make_plots(results: dict, run_dir, prefix: str = "") -> dict:
    """PNG files in the run directory: training curves (from training_log.json), PIT histogram + coverage, per-asset
    NLL skill against GARCH-t. Returns {plot: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run_dir = Path(run_dir)
    out = {}
    log_path = run_dir / "training_log.json"
    epochs = read_json(log_path, "training log").get("epochs", []) if log_path.exists() else []
    if epochs:
        e = [x["epoch"] for x in epochs]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(e, [x["train_loss"] for x in epochs], "o-", label="train")
        a1.plot(e, [x["val_loss"] for x in epochs], "o-", label="val")
        if results.get("unigram_loss") is not None:
            a1.axhline(results["unigram_loss"], color="grey", ls="--", label=f"unigram ({_split_of(results)})")
        a1.set(xlabel="epoch", ylabel="loss (nats per token)", title="loss")
        a1.legend()
        a2.plot(e, [100 * x["train_accuracy"] for x in epochs], "o-", label="train")
        a2.plot(e, [100 * x["val_accuracy"] for x in epochs], "o-", label="val")
        a2.set(xlabel="epoch", ylabel="accuracy (%, mean over channels)", title="accuracy")
        a2.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "training_curves.png", dpi=100)
        plt.close(fig)
        out["training_curves"] = "training_curves.png"
    ov = results["returns"]["overall"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    centers = (np.arange(PIT_BINS) + 0.5) / PIT_BINS
    width = 1 / PIT_BINS / 3.2
    for k, (who, label) in enumerate((("model", "model"), ("random_walk", "RW"), ("garch_t", "GARCH-t"))):
        hist = ov[who].get("pit_histogram")
        if hist:
            a1.bar(centers + (k - 1) * width, [h if h is not None else 0 for h in hist], width, label=label)
    a1.axhline(1 / PIT_BINS, color="black", ls="--", lw=1)
    a1.set(xlabel="PIT", ylabel="share of days", title="PIT histogram")
    a1.legend()
    levels = [round(100 * lv) for lv in COVERAGE_LEVELS]
    x = np.arange(len(levels))
    a2.bar(x - 0.3, [lv / 100 for lv in levels], 0.2, color="grey", label="nominal")
    for k, (who, label) in enumerate((("model", "model"), ("random_walk", "RW"), ("garch_t", "GARCH-t"))):
        vals = [ov[who].get(f"coverage_{lv}") for lv in levels]
        a2.bar(x - 0.1 + 0.2 * k, [v if v is not None else 0 for v in vals], 0.2, label=label)
    a2.set_xticks(x, [f"{lv}% interval" for lv in levels])
    a2.set(ylabel="coverage", title="central interval coverage", ylim=(0, 1))
    a2.legend()
    fig.tight_layout()
    fig.savefig(run_dir / f"{prefix}calibration.png", dpi=100)
    plt.close(fig)
    out["calibration"] = f"{prefix}calibration.png"
    assets = [(s, b["skill"]["nll_vs_garch_t"]) for s, b in results["returns"]["per_asset"].items()
              if b["skill"]["nll_vs_garch_t"] is not None]
    assets.sort(key=lambda t: t[1])
    fig, ax = plt.subplots(figsize=(max(6, min(24, 0.3 * len(assets) + 2)), 4))
    if assets:
        vals = [v for _, v in assets]
        ax.bar(range(len(assets)), vals, color=["tab:green" if v > 0 else "tab:red" for v in vals])
        if len(assets) <= 60:
            ax.set_xticks(range(len(assets)), [s for s, _ in assets], rotation=90)
    else:
        ax.text(0.5, 0.5, "no asset with a GARCH-t fit", ha="center", transform=ax.transAxes)
    ax.axhline(0, color="black", lw=1)
    ax.set(ylabel="NLL skill (nats/day, > 0: model better)", title="per-asset NLL skill against GARCH(1,1)-t")
    fig.tight_layout()
    fig.savefig(run_dir / f"{prefix}skill_vs_garch_t.png", dpi=100)
    plt.close(fig)
    out["skill_vs_garch_t"] = f"{prefix}skill_vs_garch_t.png"
    return out
