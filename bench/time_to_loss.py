"""Time to a target validation loss: the loss at every position (ours) against the original's objective (only the
candle after each window), with the same model, data, optimizer and trainer step, each objective at its best
learning rate of the same grid.

Data (default): every daily series of ../shared/data through the files provider (276 assets, ~775k real candles;
bad rows dropped; global 70/15/15 time split; tokenizer fitted on the training period). `--data sample`: the
sample universe (SPX, IXIC, AAPL, GOOG, IBM, MSFT; 22,020 candles), where the every-position run overfits (it passes over the
8.5k training candles every 8 steps) before it reaches the original's best. Model and optimizer:
configs/sample.json (vocab 64, context 64, d_model 128, 4 layers, dropout 0.1, batch 16 windows, AdamW, weight
decay 0.1, clip 1.0), with a constant learning rate after the warmup (`--min-lr-ratio 1`), so that neither run
gains from an annealing the other has not had yet.

Learning rate: a step of the original's objective averages 16 targets, ours up to 16 x 64, so the two gradients
differ in noise by far more than a batch-size change, and one learning rate is not the best for both. Each
objective runs at every rate of `--learning-rates` (default 5e-4 to 8e-3 in factors of 2); the original's
best rate sets the target, and each side is timed at its own fastest rate to that target.

Both runs start from the same initial weights and dropout stream and call the same `Trainer.step_stats`; they
differ only in the windows each step trains on:
- every position (ours): the trainer's training windows (each training candle a target once per epoch, at
  every position of a window);
- original: a window at every start offset whose only target is the candle after it (the loss mask keeps the
  last position), shuffled every epoch. A step costs the same: 16 windows x 64 positions, forward and backward.

Validation metric, the same for both and the original's own: the cross-entropy (mean over the 4 channels) of the
candle after a window with full context, on 512 evenly spaced validation candles, computed by `Trainer.evaluate`.
Target: the original's best validation loss within its budget (`--budget` steps, evaluated every budget/60
steps) over the grid. Time: wall-clock of the training steps only, up to the first evaluation at or below the target
(evaluations excluded: they cost the same for both). Printed: both times, their ratio (original / ours), and the
ratio of steps, which does not depend on the machine's load.

Writes bench/results/time_to_loss.json. Run: `python bench/time_to_loss.py [--budget 3000] [--learning-rates 1e-3,2e-3] [--data sample]`
(~20 minutes on 2 cores with the default grid).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, case_config, describe, load1, machine, write_result  # noqa: E402

from marketgpt.distributed import Dist  # noqa: E402
from marketgpt.train import Trainer, write_run_files  # noqa: E402

TARGET_RATIO = 20.0
VAL_CANDLES = 512   # evenly spaced validation candles (a fixed subset, the same for both): ~1 s per evaluation
SHARED = ROOT.parent / "shared" / "data"


def shared_universe(folder: Path) -> Path:
    """A universe CSV of every daily series in ../shared/data (its manifest, intraday files left out)."""
    import pandas as pd

    manifest = pd.read_csv(SHARED / "manifest.csv")
    path = folder / "shared_universe.csv"
    manifest[manifest.category != "intraday"][["symbol", "category"]].to_csv(path, index=False)
    return path


def every_offset_windows(trainer: Trainer, split: str) -> np.ndarray:
    """The original's windows: for every candle r of the split with a full context inside its asset, the window
    of rows r-T..r-1 whose only target is row r: (start, target_lo, target_hi, asset) = (r-T, r, r+1, asset)
    (a trainer window holds the inputs start..start+T-1 and the targets one row later)."""
    store, T = trainer.store, trainer.cfg.model.context_length
    k = ("train", "val", "test").index(split)
    out = []
    for begin, end in store.asset_rows().values():
        rows = np.flatnonzero(store.split[begin:end] == k) + begin
        rows = rows[rows - T >= begin]           # inputs r-T..r-1 all inside the asset
        out.append(np.stack([rows - T, rows, rows + 1, np.full_like(rows, store.asset[begin])], axis=1))
    return np.concatenate(out).astype(np.int64)


def validate(trainer: Trainer, windows: np.ndarray) -> float:
    """Trainer.evaluate in batches of 512 windows instead of the training batch (16): the same metric, faster."""
    t = trainer.cfg.training
    saved, t.batch_size = t.batch_size, 512
    try:
        return trainer.evaluate(windows)[0]
    finally:
        t.batch_size = saved


def run(trainer: Trainer, windows: np.ndarray, val: np.ndarray, max_steps: int, eval_every: int, target: float,
        seed: int, label: str) -> dict:
    """Train on `windows` (reshuffled every epoch) until the validation loss is <= target or max_steps; returns
    the evaluation history [(step, training seconds so far, val loss)]. eval_every 0: evaluate after steps 1..20,
    then whenever the step count has grown by 5% (the time to the target is overstated by at most 5%)."""
    B = trainer.cfg.training.batch_size
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(windows)), 0
    history, train_s, best = [], 0.0, math.inf
    for step in range(1, max_steps + 1):
        if pos + B > len(order):
            order, pos = rng.permutation(len(windows)), 0
        batch = windows[order[pos:pos + B]]
        pos += B
        t0 = time.perf_counter()
        trainer.step_stats(batch)
        trainer.state.global_step += 1
        train_s += time.perf_counter() - t0
        due = step % eval_every == 0 if eval_every else (step <= 20 or step >= 1.05 * history[-1][0])
        if due or step == max_steps:
            loss = validate(trainer, val)
            best = min(best, loss)
            history.append((step, train_s, loss))
            if loss <= target:
                break
    reached = history[-1][2] <= target
    print(f"  {label:<16} {history[-1][0]:6d} steps, {train_s:7.1f} s of training, best val {best:.4f}"
          f"{'' if reached or math.isinf(target) else ' (target not reached)'}", flush=True)
    return {"history": history, "steps": history[-1][0], "train_s": train_s, "best_val": best}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=3000, help="the original's step budget (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--min-lr-ratio", type=float, default=1.0,
                    help="the cosine's floor: 1 = constant learning rate after the warmup (default), 0.1 = the config's")
    ap.add_argument("--learning-rates", default="5e-4,1e-3,2e-3,4e-3,8e-3",
                    help="comma-separated grid; each objective is timed at its own best rate (default %(default)s)")
    ap.add_argument("--context-length", type=int, default=0, help="override the sample config's context (64)")
    ap.add_argument("--data", choices=["shared", "sample"], default="shared" if SHARED.is_dir() else "sample",
                    help="every daily series of ../shared/data via the files provider (default when present), or "
                         "the sample universe")
    args = ap.parse_args()
    lrs = [float(x) for x in args.learning_rates.split(",")]
    mach = machine(torch.device("cpu"))
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']} (includes this process)")
    with tempfile.TemporaryDirectory() as tmp:
        data = ([f"data.data_dir={ROOT / 'data'}"] if args.data == "sample" else
                [f"data.universe={shared_universe(Path(tmp))}", f"data.provider=files:{SHARED}",
                 f"data.data_dir={Path(tmp) / 'cache'}", "data.on_bad_rows=drop"])
        cfg = case_config("sample", data + [f"training.checkpoint_dir={tmp}", f"training.seed={args.seed}",
                                            "training.evaluate=false", f"training.min_lr_ratio={args.min_lr_ratio}"]
                          + ([f"model.context_length={args.context_length}"] if args.context_length else []))
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        write_run_files(cfg, run_dir, Dist())

        def fresh(lr: float) -> Trainer:
            cfg.training.learning_rate = lr
            torch.manual_seed(args.seed)                 # the same initial weights and dropout stream for all
            trainer = Trainer(cfg, run_dir, Dist(), log=lambda *a, **k: None)
            trainer.total_steps = args.budget            # all follow the schedule of the original's budget
            trainer.model.train()
            return trainer

        probe = fresh(lrs[0])
        ours_windows = probe.train_windows
        original_windows = every_offset_windows(probe, "train")
        val = every_offset_windows(probe, "val")
        val = val[np.linspace(0, len(val) - 1, min(VAL_CANDLES, len(val))).astype(int)]
        T, B = cfg.model.context_length, cfg.training.batch_size
        n_assets, n_candles = len(probe.store.symbols), len(probe.store.tokens)
        del probe
        print(f"{args.data} data: {n_assets} assets, {n_candles:,} candles; training targets per epoch: ours "
              f"{len(ours_windows)} windows x up to {T} positions, original {len(original_windows):,} windows x 1; "
              f"validation: {len(val):,} candles with full context")

        eval_original = max(1, args.budget // 60)
        print(f"original objective: {args.budget} steps of {B} windows, validation every {eval_original} steps, "
              f"learning rates {', '.join(f'{lr:g}' for lr in lrs)}")
        originals = {lr: run(fresh(lr), original_windows, val, args.budget, eval_original, -math.inf, args.seed,
                             f"original lr {lr:g}") for lr in lrs}
        original_lr = min(lrs, key=lambda lr: originals[lr]["best_val"])
        original = originals[original_lr]
        target = original["best_val"]
        at = next(h for h in original["history"] if h[2] <= target)
        original.update(steps_to_target=at[0], seconds_to_target=at[1])
        print(f"target: the original's best validation loss in its budget, {target:.4f} at lr {original_lr:g}, "
              f"first reached at step {at[0]} after {at[1]:.1f} s of training")
        mine_runs = {lr: run(fresh(lr), ours_windows, val, args.budget, 0, target, args.seed,
                             f"every position lr {lr:g}") for lr in lrs}
    reaching = [lr for lr in lrs if mine_runs[lr]["history"][-1][2] <= target]
    reached = bool(reaching)
    mine_lr = min(reaching, key=lambda lr: mine_runs[lr]["train_s"]) if reached else original_lr
    mine = mine_runs[mine_lr]
    mine.update(steps_to_target=mine["steps"] if reached else None, seconds_to_target=mine["train_s"] if reached else None)
    ratio = original["seconds_to_target"] / mine["train_s"] if reached else None
    step_ratio = original["steps_to_target"] / mine["steps"] if reached else None
    if reached:
        print(f"time to val loss {target:.4f}: original {original['seconds_to_target']:.1f} s at lr {original_lr:g}, "
              f"every position {mine['train_s']:.1f} s at lr {mine_lr:g} -> {ratio:.1f}x faster "
              f"({step_ratio:.1f}x fewer steps); target >= {TARGET_RATIO:.0f}x: "
              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}")
    else:
        print(f"every position did not reach {target:.4f} in {args.budget} steps at any learning rate")
    grid = {name: {f"{lr:g}": {"best_val": r["best_val"], "steps": r["steps"], "train_s": r["train_s"]}
                   for lr, r in runs.items()} for name, runs in (("original", originals), ("every_position", mine_runs))}
    data = ("the sample universe (SPX, IXIC, AAPL, GOOG, IBM, MSFT daily)" if args.data == "sample" else
            f"{n_assets} daily series of ../shared/data, {n_candles:,} candles")
    result = {"benchmark": "time_to_loss", "machine": mach, "data": data, "config": "configs/sample.json",
              "context_length": T, "min_lr_ratio": args.min_lr_ratio, "budget_steps": args.budget, "target_val_loss": target,
              "target_rule": "the original's best full-context validation loss within its step budget, over the grid",
              "learning_rates": {"grid": lrs, "original": original_lr, "every_position": mine_lr}, "grid": grid,
              "original": original, "every_position": mine, "ratio": ratio, "step_ratio": step_ratio,
              "summary": {"target": f"every-position loss reaches the target >= {TARGET_RATIO:.0f}x faster",
                          "ratio": ratio, "met": bool(ratio and ratio >= TARGET_RATIO)}}
    print(f"load average now {load1()}; wrote {write_result('time_to_loss', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
