"""Atomic writes of checkpoints and JSON, and pickle-free loading (`weights_only=True`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import MarketGPTError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename: a crash never leaves a half file."""
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(obj, path: str | Path) -> None:
    path = Path(path)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MarketGPTError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        if isinstance(exc, OSError) and exc.errno == 22 or "failed finding central directory" in str(exc):
            raise MarketGPTError(f"{path}: truncated or corrupt checkpoint (not a complete torch file); use another "
                                 f"checkpoint of the run or train again") from None
        raise MarketGPTError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
