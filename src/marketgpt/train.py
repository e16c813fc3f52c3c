"""One trainer for every case: DDP under torchrun/srun (or a single process), every-position loss,
AdamW with warmup + cosine, early stopping, atomic checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .baselines import unigram_nll
from .checkpoint import load_checkpoint, save_atomic, write_json
from .config import Config, read_json
from .dataset import TokenStore, gather_inputs, gather_sequences, make_windows
from .distributed import (
    Dist,
    all_gather_objects,
    all_sum,
    barrier,
    broadcast_object,
    gradient_group,
    init_distributed,
    shutdown,
)
from .errors import MarketGPTError
from .model import MarketGPT
from .progress import is_terminal
from .run import has_unknown_rows, read_run_config
from .run_files import Start, data_lines, end_run, process_id, start_run_dir, write_run_files  # noqa: F401 (kept importable here)

REQUEUE_EXIT_CODE = 3  # the trainer saved a checkpoint on a signal and wants to be started again
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C: saved like a signal, exits as an interrupted command does
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
STOP_CHECK_EVERY = 10  # distributed ranks compare their stop flags every this many steps (each check waits for the device)


@dataclass
class TrainState:
    """Everything besides weights and optimizer that an exact resume needs."""

    epoch: int = 0                # epochs completed
    step: int = 0                 # steps completed inside the current epoch
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0
    epochs: list = field(default_factory=list)     # the training log
    accum: list = field(default_factory=list)      # this epoch's [loss_sum, count, correct per channel...]


def is_finished(state: TrainState, cfg: Config) -> bool:
    return state.epoch >= cfg.training.epochs or state.bad_epochs >= cfg.training.early_stopping_patience


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds}s"


def lr_at(step: int, total: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio × learning_rate."""
    t = cfg.training
    warmup = max(1, int(t.warmup_ratio * total))
    if step < warmup:
        return t.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return t.learning_rate * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def correct_per_channel(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Number of masked positions where each channel's argmax is the target: (C,)."""
    return ((logits.argmax(-1) == targets) & mask.unsqueeze(-1)).sum(dim=(0, 1))


def count_targets(windows: np.ndarray, context_length: int) -> int:
    """Targets that count in a batch of windows (start, target_lo, target_hi, asset): the rows start+1..start+T that
    fall in [target_lo, target_hi). Computed from the window rows, so it never waits for the device."""
    lo = np.maximum(windows[:, 1], windows[:, 0] + 1)
    hi = np.minimum(windows[:, 2], windows[:, 0] + context_length + 1)
    return int(np.clip(hi - lo, 0, None).sum())


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, d: Dist, log=print, unknown: bool = True):
        """unknown: the model has the unknown-asset and unknown-category rows (False only to resume a run from
        before they existed)."""
        self.cfg, self.run_dir, self.d, self.log = cfg, run_dir, d, log
        self.store = TokenStore.load(run_dir / "tokens")
        T = cfg.model.context_length
        self.train_windows = make_windows(self.store, "train", T)
        self.val_windows = make_windows(self.store, "val", T)
        self.categories = torch.as_tensor(self.store.category_ids)
        self.model = MarketGPT(cfg.model, self.store.tokens.shape[1], len(self.store.symbols),
                               len(self.store.category_names), unknown=unknown).to(d.device)
        self.model.gradient_checkpointing = cfg.training.gradient_checkpointing
        # The fused AdamW kernel on CUDA and on CPU (see configure_optimizer).
        self.optimizer = self.model.configure_optimizer(cfg.training.weight_decay, cfg.training.learning_rate, fused=True)
        wrapped = DDP(self.model, device_ids=[d.local_rank] if d.device.type == "cuda" else None,
                      process_group=gradient_group(d)) if d.enabled else self.model
        self.forward = torch.compile(wrapped) if cfg.training.compile else wrapped
        per_step = cfg.training.batch_size * d.world_size
        self.steps_per_epoch = max(1, len(self.train_windows) // per_step)
        if cfg.training.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.training.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.training.epochs
        self.state = TrainState()
        self.stop_requested = False
        self.stopped = False   # this process saved last.pt on a stop signal and returned before the end

    # --- batches -------------------------------------------------------------------------------
    def hidden_ids(self, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Asset dropout for the n windows of the current global batch: (asset hidden, category hidden) masks, or
        None without asset dropout.

        A hidden asset is fed as the unknown asset, and a share category_dropout of those also as the unknown
        category, so both rows are trained on every kind of series and a new ticker gets a trained embedding. The
        draw depends on the seed and the global step only: the same on every rank and after a resume."""
        t = self.cfg.training
        if self.model.unknown_asset is None or t.asset_dropout == 0:
            return None
        u = np.random.default_rng([t.seed, 1, self.state.global_step]).random((2, n))
        asset = u[0] < t.asset_dropout
        return asset, asset & (u[1] < t.category_dropout)

    def batch(self, windows: np.ndarray, hidden: tuple[np.ndarray, np.ndarray] | None = None):
        seq, mask, asset = gather_sequences(self.store, windows, self.cfg.model.context_length)
        inputs = gather_inputs(self.store, windows, self.cfg.model.context_length)
        asset_t = torch.from_numpy(asset)
        category = self.categories[asset_t]
        if hidden is not None:
            asset_t = torch.where(torch.from_numpy(hidden[0]), self.model.unknown_asset, asset_t)
            category = torch.where(torch.from_numpy(hidden[1]), self.model.unknown_category, category)
        # inputs and targets are two views of one (B, T+1, C) tensor: one copy to the device instead of two
        host = [torch.from_numpy(seq), torch.from_numpy(mask), asset_t, category,
                *(torch.from_numpy(inputs[k]) for k in sorted(inputs))]
        if self.d.device.type == "cuda":
            # Pinned host memory makes the copies asynchronous: the host prepares the next batch while the device
            # still runs this step (a copy from pageable memory waits for the device first).
            host = [t.pin_memory().to(self.d.device, non_blocking=True) for t in host]
        seq, mask_t, asset_t, category, *rest = host
        return seq[:, :-1], seq[:, 1:], mask_t, asset_t, category, dict(zip(sorted(inputs), rest))

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The same permutation on every rank, and after a resume: it depends on the seed and epoch only."""
        return np.random.default_rng([self.cfg.training.seed, epoch]).permutation(len(self.train_windows))

    def autocast(self):
        if self.d.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- one optimisation step -------------------------------------------------------------------
    def step_stats(self, global_windows: np.ndarray) -> torch.Tensor:
        """One optimisation step. Every rank takes its share of the global batch; the loss is normalised by the
        global number of targets so that the averaged DDP gradient equals the single-process gradient of the same
        batch. Returns this rank's [loss sum, targets, correct per channel] as a float64 tensor on the device: the
        host never waits for the device inside a step, so on a GPU it prepares the next batch meanwhile."""
        local = global_windows[self.d.rank::self.d.world_size]
        hidden = self.hidden_ids(len(global_windows))
        if hidden is not None:
            hidden = tuple(m[self.d.rank::self.d.world_size] for m in hidden)
        x, y, mask, asset, category, inputs = self.batch(local, hidden)
        T = self.cfg.model.context_length
        n_global, n_local = count_targets(global_windows, T), count_targets(local, T)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.state.global_step, self.total_steps, self.cfg)
        with self.autocast():
            logits, loss = self.forward(x, asset, category, y, mask, **inputs)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (n_local * self.d.world_size / n_global)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.training.gradient_clip)
        self.optimizer.step()
        C = y.shape[-1]
        with torch.no_grad():
            loss64 = loss.detach().double()   # new_full, not new_tensor: a host-to-device copy would wait
            sums = torch.stack([loss64 * n_local * C, loss64.new_full((), n_local)])
            return torch.cat([sums, correct_per_channel(logits, y, mask).double()])

    def train_step(self, global_windows: np.ndarray) -> tuple[float, float, torch.Tensor]:
        """step_stats as (loss sum, targets, correct per channel on the CPU)."""
        stats = self.step_stats(global_windows).cpu()
        return stats[0].item(), stats[1].item(), stats[2:].long()

    # --- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, windows: np.ndarray) -> tuple[float, list[float]]:
        """Mean loss per target and channel, and accuracy per channel, over all ranks."""
        self.model.eval()
        C = self.store.tokens.shape[1]
        T = self.cfg.model.context_length
        totals = torch.zeros(2 + C, dtype=torch.float64, device=self.d.device)
        mine = windows[self.d.rank::self.d.world_size]
        for i in range(0, len(mine), self.cfg.training.batch_size):
            chunk = mine[i:i + self.cfg.training.batch_size]
            x, y, mask, asset, category, inputs = self.batch(chunk)
            with self.autocast():
                logits, loss = self.model(x, asset, category, y, mask, **inputs)
            n = count_targets(chunk, T)
            loss64 = loss.double()
            totals += torch.cat([torch.stack([loss64 * n * C, loss64.new_full((), n)]),
                                 correct_per_channel(logits, y, mask).double()])
        self.model.train()
        totals = all_sum(totals, self.d)
        n = max(totals[1].item(), 1.0)
        return totals[0].item() / (n * C), (totals[2:] / n).tolist()

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        rng = all_gather_objects(torch.get_rng_state(), self.d)
        cuda_rng = all_gather_objects(torch.cuda.get_rng_state(self.d.device) if self.d.device.type == "cuda" else None, self.d)
        accum = all_sum(torch.tensor(self.state.accum or [0.0], dtype=torch.float64, device=self.d.device), self.d).tolist()
        state = dict(self.state.__dict__, accum=accum if self.state.accum else [])
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "state": json.dumps(state),
                "rng": rng, "cuda_rng": [r for r in cuda_rng if r is not None], "world_size": self.d.world_size,
                "config": json.dumps(self.cfg.to_dict())}

    def save(self, name: str) -> None:
        ckpt = self.checkpoint()
        if self.d.is_main:
            save_atomic(ckpt, self.run_dir / name)

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**json.loads(ckpt["state"]))
        if ckpt["world_size"] == self.d.world_size:
            torch.set_rng_state(ckpt["rng"][self.d.rank])
            if ckpt["cuda_rng"] and self.d.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["cuda_rng"][self.d.rank], self.d.device)
        if self.state.accum and not self.d.is_main:
            self.state.accum = [0.0] * len(self.state.accum)   # rank 0 carries the totals so far

    def save_best(self, epoch: int, val_loss: float) -> None:
        if self.d.is_main:
            save_atomic({"model": self.model.state_dict(), "epoch": epoch, "val_loss": val_loss,
                         "config": json.dumps(self.cfg.to_dict())}, self.run_dir / "best_model.pt")

    def save_periodic(self, epoch: int) -> None:
        t = self.cfg.training
        if epoch % t.checkpoint_every:
            return
        self.save(f"checkpoint_epoch_{epoch}.pt")
        if self.d.is_main:
            kept = sorted(self.run_dir.glob("checkpoint_epoch_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
            for old in kept[:-t.keep_checkpoints]:
                old.unlink()

    def write_log(self) -> None:
        if self.d.is_main:
            s = self.state
            write_json({"epochs": s.epochs, "best_val_loss": s.best_val_loss if s.epochs else None,
                        "best_epoch": s.best_epoch, "total_epochs": self.cfg.training.epochs,
                        "steps_per_epoch": self.steps_per_epoch, "elapsed_seconds": round(s.elapsed, 3),
                        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "world_size": self.d.world_size,
                        "finished": self.finished, "stopped": self.stopped,
                        "state": "finished" if self.finished else "stopped" if self.stopped else "training",
                        **process_id()}, self.run_dir / "training_log.json")

    @property
    def finished(self) -> bool:
        return is_finished(self.state, self.cfg)

    # --- the loop -------------------------------------------------------------------------------
    def request_stop(self, signum, frame) -> None:
        """SIGTERM, SIGUSR1 and Ctrl-C: save last.pt at the next step and stop. A second Ctrl-C stops at once."""
        if signum == signal.SIGINT and self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = signum

    def should_stop(self) -> bool:
        """All ranks agree to stop at the same step when any of them got the signal: distributed, they compare
        flags every STOP_CHECK_EVERY steps (a collective that waits for the device), alone the flag is read as is."""
        if not self.d.enabled:
            return self.stop_requested
        if self.state.global_step % STOP_CHECK_EVERY:
            return False
        flag = all_sum(torch.tensor([float(self.stop_requested)], device=self.d.device), self.d)
        return bool(flag.item())

    def run(self) -> int:
        cfg, s = self.cfg, self.state
        C = self.store.tokens.shape[1]
        per_step = cfg.training.batch_size * self.d.world_size
        every = cfg.training.last_every_steps
        started = time.time() - s.elapsed
        self.model.train()
        while not self.finished:
            epoch = s.epoch + 1
            order = self.epoch_order(epoch)
            if not s.accum:
                s.accum = [0.0] * (2 + C)
            # this epoch's sums stay on the device; s.accum is brought up to date before anything saves it
            accum = torch.tensor(s.accum, dtype=torch.float64, device=self.d.device)
            steps = range(s.step, self.steps_per_epoch)
            bar = None
            if self.d.is_main and is_terminal():
                from tqdm import tqdm

                bar = tqdm(total=self.steps_per_epoch, initial=s.step, desc=f"epoch {epoch}", leave=False)
            for step in steps:
                windows = order[step * per_step:(step + 1) * per_step]
                stats = self.step_stats(self.train_windows[windows])
                accum += stats
                s.step, s.global_step = step + 1, s.global_step + 1
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:   # reading the loss waits for the device
                        loss_sum, count = stats[:2].tolist()
                        bar.set_postfix(loss=f"{loss_sum / max(count, 1) / C:.3f}")
                stop = self.should_stop()
                if stop or (every and s.global_step % every == 0):
                    s.accum = accum.tolist()
                    s.elapsed = time.time() - started
                    self.save("last.pt")
                if stop:
                    self.stopped = True
                    self.log(f"Stop requested: saved {self.run_dir / 'last.pt'} in epoch {epoch} after step {s.step}; "
                             f"resume with --resume {self.run_dir}")
                    return INTERRUPTED_EXIT_CODE if self.stop_requested == signal.SIGINT else REQUEUE_EXIT_CODE
            if bar is not None:
                bar.close()
            totals = all_sum(accum, self.d).tolist()
            n = max(totals[1], 1.0)
            train_loss, train_acc = totals[0] / (n * C), [c / n for c in totals[2:]]
            val_loss, val_acc = self.evaluate(self.val_windows)
            s.epoch, s.step, s.accum = epoch, 0, []
            s.elapsed = time.time() - started
            improved = val_loss < s.best_val_loss
            if improved:
                s.best_val_loss, s.best_epoch, s.bad_epochs = val_loss, epoch, 0
                self.save_best(epoch, val_loss)
            else:
                s.bad_epochs += 1
            s.epochs.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                             "train_accuracy": float(np.mean(train_acc)), "val_accuracy": float(np.mean(val_acc)),
                             "train_accuracy_per_channel": train_acc, "val_accuracy_per_channel": val_acc,
                             "lr": lr_at(s.global_step - 1, self.total_steps, cfg), "time": round(s.elapsed, 3)})
            eta = s.elapsed / epoch * (cfg.training.epochs - epoch)
            self.log(f"Epoch {epoch}/{cfg.training.epochs}\n"
                     f"Train Loss: {train_loss:.3f} | Train Acc: {100 * np.mean(train_acc):.1f}%\n"
                     f"Val Loss: {val_loss:.3f} | Val Acc: {100 * np.mean(val_acc):.1f}%"
                     f"{' (best)' if improved else ''}\n"
                     f"Time: {format_duration(s.elapsed)} | ETA: {format_duration(eta)}")
            self.save_periodic(epoch)
            self.save("last.pt")
            self.write_log()
        if s.bad_epochs >= cfg.training.early_stopping_patience:
            self.log(f"Early stopping: no val improvement for {s.bad_epochs} epochs; best epoch {s.best_epoch}")
        self.log(f"Best val loss {s.best_val_loss:.4f} at epoch {s.best_epoch}; run directory {self.run_dir}")
        return 0


def device_line(d: Dist) -> str:
    if d.device.type == "cuda":
        return f"Using GPUs: {d.world_size}"
    threads = torch.get_num_threads()
    return f"Using CPU: {threads} threads" + (f" x {d.world_size} processes" if d.enabled else "")


def train(cfg: Config | None = None, resume: str | Path | None = None, run_dir: str | Path | None = None,
          log=print, start: Start | None = None) -> Path:
    """Train a config (or resume a run directory) in this process, joining DDP when launched by torchrun/srun.

    `run_dir` names the run directory instead of `<name>_<timestamp>`; if it already holds a checkpoint the run
    resumes from it, so a requeued batch job can run the same command again. `start`: a run derived from another
    (run_files.Start, used by fine-tuning)."""
    if run_dir is not None and (Path(run_dir) / "last.pt").exists():
        resume = run_dir
    d = init_distributed()
    say = log if d.is_main else (lambda *a, **k: None)
    if d.device.type == "cpu" and d.enabled:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.local_world_size))
    made_here = not resume and (run_dir is None or not Path(run_dir).exists())
    started = None   # the run directory once this call owns it: from here a failure is recorded in it
    try:
        ckpt = None
        if resume:
            run_dir = Path(resume)
            cfg = read_run_config(run_dir)
            last = run_dir / "last.pt"
            if not last.exists():
                raise MarketGPTError(f"{run_dir}: nothing to resume (no last.pt)")
            ckpt = load_checkpoint(last, map_location=d.device)
            done = TrainState(**json.loads(ckpt["state"]))
            if is_finished(done, cfg):
                raise MarketGPTError(f"{run_dir}: this run already finished ({done.epoch} of {cfg.training.epochs} "
                                     f"epochs, best epoch {done.best_epoch}); see its results with `marketgpt "
                                     f"evaluate {run_dir}`, or train a new run")
        else:
            run_dir = Path(broadcast_object(str(start_run_dir(cfg, run_dir, d, start)) if d.is_main else None, d))
            barrier(d)
        started = run_dir
        torch.manual_seed(cfg.training.seed + d.rank)
        say(device_line(d))
        for line in data_lines(run_dir) if d.is_main and not resume else []:
            say(line)
        symbols = read_json(run_dir / "tokens" / "assets.json", "token store index")["symbols"]
        unknown = ckpt is None or has_unknown_rows(ckpt["model"], len(symbols))
        trainer = Trainer(cfg, run_dir, d, say, unknown=unknown)
        if ckpt is None and start is not None and start.init is not None:
            start.init(trainer.model, trainer.store)
        if ckpt is not None:
            trainer.restore(ckpt)
            say(f"Resumed {run_dir} in epoch {trainer.state.epoch + 1} after step {trainer.state.step}")
        m = trainer.model
        say(f"Parameters: {m.num_parameters():,} total, {m.num_parameters(non_embedding=True):,} non-embedding")
        say(f"Run directory: {run_dir}")
        unigram = float(unigram_nll(trainer.store, cfg.model.vocab_size).mean())
        say(f"Unigram baseline val loss: {unigram:.3f}")
        say(f"Train windows: {len(trainer.train_windows)}, val windows: {len(trainer.val_windows)}, "
            f"steps per epoch: {trainer.steps_per_epoch}, effective batch: {cfg.training.batch_size * d.world_size}")
        trainer.write_log()   # a resumed run is no longer "stopped"
        previous = [signal.signal(sig, trainer.request_stop) for sig in STOP_SIGNALS]
        try:
            code = trainer.run()
        finally:
            for sig, handler in zip(STOP_SIGNALS, previous):
                signal.signal(sig, handler)
        trainer.write_log()
        barrier(d)   # no rank leaves the group while another still uses it
    except BaseException as exc:
        if started is not None and d.is_main:
            end_run(started, exc, made_here)
        raise
    finally:
        shutdown(d)
    if code:
        raise SystemExit(code)
    # Calibration (on val) and evaluation run in one process, after every rank has left the process group together.
    if d.is_main and cfg.training.calibrate:
        from .calibration import calibrate_run
        calibrate_run(run_dir, log=say)
    if d.is_main and cfg.training.evaluate:
        from .evaluate import evaluate_run, headline

        say(headline(evaluate_run(run_dir, log=say)))
    return run_dir
