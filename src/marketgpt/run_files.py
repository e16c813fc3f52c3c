"""Writing a run directory: choosing it (a trained run is never overwritten), the files prepared before training
(config, tokenizer, token store, asset and data info), and the end of a run that fails after it started.

The trainer (train.py) calls these; what is written here is read back through run.py.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .checkpoint import write_json
from .config import Config, read_json, writable_dir
from .data import dropped_rows
from .dataset import make_windows, prepare_dataset
from .distributed import Dist
from .errors import MarketGPTError

TRAINED_FILES = ("last.pt", "best_model.pt", "test_results.json")   # what --run-dir must never overwrite


def process_id() -> dict:
    """Which process writes a run: `status` tells a crashed run (its process gone) from one still training."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def versions() -> dict:
    return {"marketgpt": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def new_run_dir(cfg: Config) -> Path:
    root = writable_dir(cfg.training.checkpoint_dir, "checkpoint folder (training.checkpoint_dir)")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    run_dir, n = root / f"{cfg.name}_{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{cfg.name}_{stamp}_{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def fresh_run_dir(run_dir: Path) -> Path:
    """--run-dir: a new or empty folder, or a run that never trained (a job stopped before its first checkpoint).
    A trained run is never overwritten: its weights, tokenizer and results belong together."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (run_dir / "config.json").exists():
            raise MarketGPTError(f"{run_dir}: exists and is not a run directory")
        trained = [n for n in TRAINED_FILES if (run_dir / n).exists()] + [p.name for p in run_dir.glob("checkpoint_epoch_*.pt")]
        if trained:
            raise MarketGPTError(f"{run_dir}: holds a trained run ({', '.join(trained)}), which is not overwritten; "
                                 f"give another --run-dir (its results: `marketgpt evaluate {run_dir}`)")
    return writable_dir(run_dir, "run directory (--run-dir)")


@dataclass
class Start:
    """How a run derived from another one begins (fine-tuning): `prepare(cfg, run_dir)` writes what the data
    preparation reads (a universe file) into the new run directory and may point cfg at it; `tokenizer` is kept
    instead of fitting one; `parent` is recorded in config.json's "run" block; `init(model, store)` sets the
    starting weights. A resume reads the run's own files and checkpoint and needs none of this."""

    tokenizer: object = None
    parent: dict | None = None
    prepare: Callable | None = None
    init: Callable | None = None


def write_run_files(cfg: Config, run_dir: Path, d: Dist, start: Start | None = None) -> None:
    """Prepare the data once (rank 0) and write config, tokenizer, token store, asset and data info."""
    start = start or Start()
    if start.prepare is not None:
        start.prepare(cfg, run_dir)
    prepared = prepare_dataset(cfg, start.tokenizer)
    prepared.tokenizer.save(run_dir / "tokenizer.json")
    prepared.store.save(run_dir / "tokens")
    store, split = prepared.store, prepared.split
    T = cfg.model.context_length
    made = {name: make_windows(store, name, T) for name in ("train", "val", "test")}
    rows = store.asset_rows()
    with_windows = {store.symbols[a] for w in made.values() for a in np.unique(w[:, 3])}
    skipped = {s: "no candles in the data period" if s not in rows else
               f"{rows[s][1] - rows[s][0]} token rows, fewer than context_length + 1 = {T + 1}"
               if rows[s][1] - rows[s][0] < T + 1 else "no window in any split"
               for s in prepared.universe.symbol if s not in with_windows}
    assets = [{"id": i, "symbol": sym, "category": store.categories[i],
               "category_id": int(store.category_ids[i]), "rows": rows[sym][1] - rows[sym][0],
               **{f"{name}_rows": int((store.split[rows[sym][0]:rows[sym][1]] == k).sum())
                  for k, name in enumerate(("train", "val", "test"))}}
              for i, sym in enumerate(store.symbols)]
    write_json({"assets": assets, "categories": store.category_names,
                "unknown": {"asset_id": len(store.symbols), "category_id": len(store.category_names),
                            "asset_dropout": cfg.training.asset_dropout,
                            "category_dropout": cfg.training.category_dropout}}, run_dir / "asset_info.json")
    write_json({"split": split.to_dict(), "token_rows": int(len(store.tokens)),
                "windows": {name: int(len(w)) for name, w in made.items()},
                "channels": prepared.tokenizer.channels, "context_length": T,
                "skipped_assets": list(skipped), "skipped_reasons": skipped, "on_bad_rows": cfg.data.on_bad_rows,
                "dropped_rows": dropped_rows(prepared.universe, cfg.data.provider, cfg.data.data_dir or None),
                "no_volume": prepared.no_volume},
               run_dir / "data_info.json")
    write_json({**cfg.to_dict(), "run": {"versions": versions(), "world_size": d.world_size, **process_id(),
                                         "created": datetime.now().isoformat(timespec="seconds"),
                                         "train_end": split.train_end.strftime("%Y-%m-%d"),
                                         "val_end": split.val_end.strftime("%Y-%m-%d"),
                                         "command": " ".join(sys.argv),
                                         **({"parent": start.parent} if start.parent else {})}},
               run_dir / "config.json")


def start_run_dir(cfg: Config, run_dir: str | Path | None, d: Dist, start: Start | None = None) -> Path:
    """Make the run directory and write its files; a run that fails to start (no cached data, say) leaves no
    directory of its own behind."""
    made_here = run_dir is None or not Path(run_dir).exists()
    run_dir = new_run_dir(cfg) if run_dir is None else fresh_run_dir(Path(run_dir))
    try:
        write_run_files(cfg, run_dir, d, start)
    except BaseException:
        if made_here:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def data_lines(run_dir: Path) -> list[str]:
    """What the data preparation left out, from data_info.json: bad rows dropped and assets without a window."""
    info = read_json(run_dir / "data_info.json", "data info")
    lines = []
    if info.get("dropped_rows"):
        lines.append("Dropped bad rows (on_bad_rows=drop): " + "; ".join(
            f"{s} {sum(c.values())} ({', '.join(f'{n} {rule}' for rule, n in c.items())})"
            for s, c in info["dropped_rows"].items()))
    if info.get("no_volume"):
        lines.append(f"Warning: model.use_volume is on, but {len(info['no_volume'])} asset(s) have no volume (every "
                     f"candle 0, or no volume column in the source): {', '.join(info['no_volume'])}; their volume "
                     f"tokens carry nothing")
    if info.get("skipped_reasons"):
        lines.append("Skipped assets (no training windows): "
                     + "; ".join(f"{s} ({why})" for s, why in info["skipped_reasons"].items()))
    return lines


def end_run(run_dir: Path, exc: BaseException, made_here: bool) -> None:
    """A run that fails or is interrupted after it started must not look as if it were still training: without a
    checkpoint, a directory it made itself is removed (there is nothing to resume); otherwise its training log
    says what happened."""
    if made_here and not (run_dir / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    path = run_dir / "training_log.json"
    try:
        log = read_json(path, "training log") if path.exists() else {}
    except MarketGPTError:
        log = {}
    reason = " ".join(str(exc).split()) or exc.__class__.__name__
    log.update(state="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", finished=False,
               error=f"{exc.__class__.__name__}: {reason}"[:300])
    write_json(log, path)
