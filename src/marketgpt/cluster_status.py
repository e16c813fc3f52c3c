"""`marketgpt status`: per run directory, progress from training_log.json, the SLURM job's state and the newest
checkpoint. Works without SLURM (state "unknown") and on runs that have not finished an epoch yet."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import POSITIVE, check_number, read_json
from .errors import MarketGPTError

JOB_RECORDS = ".slurm_jobs"   # written by the job scripts of `marketgpt slurm` (see cluster.py)
CHECKPOINT_GLOBS = ("last.pt", "best_model.pt", "checkpoint_epoch_*.pt")


def _read_json(path: Path) -> dict:
    """A run file, or {} while the run has not written it yet."""
    return read_json(path) if path.exists() else {}


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def recorded_job(run_dir: Path) -> str | None:
    """The newest SLURM job whose record (CHECKPOINT_ROOT/.slurm_jobs/JOBID) names this run directory."""
    folder = run_dir.parent / JOB_RECORDS
    if not folder.is_dir():
        return None
    found = []
    for record in folder.iterdir():
        try:
            if Path(record.read_text().strip()).name == run_dir.name:
                found.append((record.stat().st_mtime, record.name))
        except OSError:
            continue
    return max(found)[1] if found else None


def slurm_state(job_id: str | None, timeout: float = 10) -> str | None:
    """PENDING, RUNNING, COMPLETED, ... from squeue (or sacct once the job left the queue); "unknown" without
    SLURM tools or controller; "not in queue" when SLURM no longer knows the job."""
    if not job_id:
        return None
    squeue = shutil.which("squeue")
    if squeue is None:
        return "unknown"
    try:
        result = subprocess.run([squeue, "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.split()[0]
        gone = result.returncode == 0 or "invalid job id" in result.stderr.lower()
        sacct = shutil.which("sacct")
        if sacct:
            result = subprocess.run([sacct, "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], capture_output=True,
                                    text=True, timeout=timeout)
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.split()[0]
        return "not in queue" if gone else "unknown"
    except (subprocess.TimeoutExpired, OSError):
        return "unknown"


def newest_checkpoint(run_dir: Path) -> tuple[str | None, float | None]:
    files = [p for pattern in CHECKPOINT_GLOBS for p in run_dir.glob(pattern)]
    if not files:
        return None, None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return newest.name, time.time() - newest.stat().st_mtime


def run_status(run_dir: str | Path, query_slurm: bool = True) -> dict:
    """Everything `status` shows for one run directory, as a dict (JSON-ready)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    if not config:
        raise MarketGPTError(f"{run_dir}: not a run directory (no config.json)")
    log = _read_json(run_dir / "training_log.json")
    epochs = log.get("epochs") or []
    last = epochs[-1] if epochs else {}
    total = log.get("total_epochs") or config.get("training", {}).get("epochs")
    epoch = int(last.get("epoch", 0))
    elapsed = log.get("elapsed_seconds")
    finished = bool(log.get("finished"))
    job = recorded_job(run_dir) or log.get("slurm_job_id")
    checkpoint, age = newest_checkpoint(run_dir)
    state = run_state(run_dir, log, config, bool(job))
    if finished:
        eta = 0.0
    elif state == "training" and epoch and elapsed is not None and total:
        eta = elapsed / epoch * (total - epoch)
    else:
        eta = None
    return {
        "run_dir": str(run_dir), "case": config.get("name"), "epoch": epoch, "total_epochs": total,
        "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
        "train_accuracy": last.get("train_accuracy"), "val_accuracy": last.get("val_accuracy"),
        "best_val_loss": log.get("best_val_loss"), "best_epoch": log.get("best_epoch"),
        "elapsed_seconds": elapsed, "eta_seconds": eta, "finished": finished, "stopped": bool(log.get("stopped")),
        "world_size": log.get("world_size", config.get("run", {}).get("world_size")),
        "slurm_job_id": str(job) if job else None,
        "slurm_state": slurm_state(job) if query_slurm else None,
        "checkpoint": checkpoint, "checkpoint_age_seconds": age, "state": state, "error": log.get("error"),
        "resumable": (run_dir / "last.pt").exists(),
    }


def process_gone(record: dict) -> bool:
    """Whether the process a run file names (pid on this host) has ended; False when it cannot be told."""
    import os
    import socket

    if not record.get("pid") or record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):
        return False
    return False


def run_state(run_dir: Path, log: dict, config: dict, has_job: bool) -> str:
    """finished, stopped, failed, interrupted, crashed (its process is gone without a word), training or starting.
    A run finished without a single epoch is not called finished."""
    state = log.get("state")
    if log.get("finished"):
        return "finished" if log.get("epochs") else "ended before its first epoch"
    if log.get("stopped"):
        return "stopped"
    if state in ("failed", "interrupted"):
        return state
    if not has_job and process_gone(log or config.get("run", {})):
        return "crashed"
    return "training" if log.get("epochs") else "starting"


def find_runs(root: str | Path) -> list[Path]:
    """Run directories (with a config.json) under a checkpoint root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise MarketGPTError(f"{root}: no such checkpoint folder (use --root)")
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "config.json").exists()]
    return sorted(runs, key=lambda p: ((p / "config.json").stat().st_mtime, p.name))


def _loss_acc(loss, acc) -> str:
    if loss is None:
        return "-"
    return f"{loss:.3f}" + (f" ({100 * acc:.1f}%)" if acc is not None else "")


def format_status(statuses: list[dict]) -> str:
    """Two lines per run: where it is, and the numbers."""
    if not statuses:
        return "no runs"
    blocks = []
    for s in statuses:
        if "unreadable" in s:
            blocks.append(f"{s['run_dir']}  unreadable: {s['unreadable']}")
            continue
        if s["slurm_job_id"]:
            job = f"job {s['slurm_job_id']} {s['slurm_state'] or ''}".rstrip()
        else:
            job = "no SLURM job"
        progress = s["state"]
        if progress in ("failed", "interrupted") and s["error"]:
            progress += f" ({s['error']})"
        # a SLURM job requeues itself; a run without one is resumed by hand
        if progress.startswith(("stopped", "failed", "interrupted", "crashed")) and s["resumable"] \
                and not (s["slurm_job_id"] and s["state"] == "stopped"):
            progress += f" (resume: marketgpt train --resume {s['run_dir']})"
        world = f"  {s['world_size']} processes" if (s["world_size"] or 1) > 1 else ""
        head = f"{s['run_dir']}  case {s['case']}  {job}  {progress}{world}"
        epoch = f"epoch {s['epoch']}/{s['total_epochs']}"
        best = (f"best val {s['best_val_loss']:.3f} @ {s['best_epoch']}" if s["best_val_loss"] is not None
                else "best val -")
        eta = "done" if s["finished"] else _duration(s["eta_seconds"])
        ckpt = (f"{s['checkpoint']} ({_duration(s['checkpoint_age_seconds'])} ago)" if s["checkpoint"]
                else "no checkpoint")
        blocks.append(
            f"{head}\n"
            f"  {epoch} | train {_loss_acc(s['train_loss'], s['train_accuracy'])} | "
            f"val {_loss_acc(s['val_loss'], s['val_accuracy'])} | {best} | "
            f"elapsed {_duration(s['elapsed_seconds'])} | ETA {eta} | {ckpt}")
    return "\n".join(blocks)


def collect(run_dirs: list[str], all_runs: bool, root: str) -> list[dict]:
    """The status of each run. A run named on the command line must be readable; among the runs found under the
    root, one whose files cannot be read is listed with the reason instead of hiding all the others."""
    named = [Path(d) for d in run_dirs]
    statuses = [run_status(d) for d in named]
    for found in find_runs(root) if all_runs or not named else []:
        if found in named:
            continue
        try:
            statuses.append(run_status(found))
        except MarketGPTError as exc:
            statuses.append({"run_dir": str(found), "unreadable": str(exc)})
    return statuses


def status_command(run_dirs: list[str], all_runs: bool = False, root: str = "checkpoints", watch: bool = False,
                   interval: float = 30.0, as_json: bool = False, out=sys.stdout) -> int:
    """Print the status of runs (once, or every `interval` seconds); 1 when a run's files could not be read."""
    check_number(interval, POSITIVE, "status --interval")   # 0 would refresh in a busy loop

    def show() -> bool:
        statuses = collect(run_dirs, all_runs, root)
        text = json.dumps(statuses, indent=2) if as_json else format_status(statuses)
        if watch and out.isatty():
            out.write("\033[H\033[J")
        if watch:
            out.write(time.strftime("%Y-%m-%d %H:%M:%S") + f"  (every {interval:g} s, Ctrl-C to stop)\n")
        out.write(text + "\n")
        out.flush()
        return any("unreadable" in s for s in statuses)

    unreadable = show()
    if not watch:
        return 1 if unreadable else 0
    try:
        while True:
            time.sleep(interval)
            show()
    except KeyboardInterrupt:
        return 0
