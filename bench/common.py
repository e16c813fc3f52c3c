"""Shared pieces of the training benchmarks: machine description, measured matmul peak, a synthetic token store
for the real trainer, and result files (bench/results/<name>.json)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from marketgpt.config import Config, load_config
from marketgpt.dataset import TokenStore
from marketgpt.distributed import Dist
from marketgpt.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONFIGS = ROOT / "configs"
CHANNELS = 4   # close, open, upper, lower (the case configs have use_volume false)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine(device: torch.device) -> dict:
    """What the numbers were measured on. The load average includes this benchmark's own process (up to ~1 per
    busy core on this machine)."""
    out = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "device": device.type,
           "load1_start": load1()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_count"] = torch.cuda.device_count()
    return out


def describe(m: dict) -> str:
    text = f"{m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads)"
    if m.get("gpu"):
        text = f"{m['gpu']} x{m['gpu_count']}; " + text
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes=(2048, 3072, 4096), repeats: int = 5) -> dict:
    """Best-of-`repeats` FLOP/s of a square torch.mm at each size; the peak is the best over sizes."""
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)   # warm-up: first-call allocation and kernel selection
        sync(device)
        inner = 1 if device.type == "cpu" else 20     # a GPU mm of 4096^2 takes ~0.1 ms: time several
        t_best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            sync(device)
            t_best = min(t_best, (time.perf_counter() - t0) / inner)
        best[n] = 2 * n ** 3 / t_best
        del a, b, out
    n = max(best, key=best.get)
    return {"flops": best[n], "size": n, "dtype": str(dtype).replace("torch.", ""), "by_size": best}


def case_config(name: str, overrides: list[str] = ()) -> Config:
    path = CONFIGS / ("sample.json" if name == "sample" else f"case_{name}.json")
    return load_config(path, list(overrides))


def synthetic_store(folder: Path, cfg: Config, windows: int, assets: int = 4, seed: int = 0) -> None:
    """A token store with at least `windows` full training windows (every position a target) of random tokens,
    and a short val and test period per asset. Throughput and memory do not depend on the token values."""
    rng = np.random.default_rng(seed)
    T, V = cfg.model.context_length, cfg.model.vocab_size
    per_asset = -(-windows // assets)
    n_train, n_held = per_asset * T + 1, T + 2
    n = n_train + 2 * n_held
    tokens = rng.integers(0, V, size=(assets * n, CHANNELS)).astype(np.uint16)
    split = np.tile(np.concatenate([np.zeros(n_train), np.ones(n_held), np.full(n_held, 2)]).astype(np.int8), assets)
    dates = np.tile(np.arange(n).astype("datetime64[D]"), assets)
    TokenStore(tokens, np.repeat(np.arange(assets, dtype=np.int32), n), split, dates,
               rng.normal(0, 0.01, len(tokens)), [f"S{i}" for i in range(assets)], ["crypto"] * assets,
               ["crypto"], np.full(len(tokens), 0.01)).save(folder / "tokens")   # a sigma: the case configs are scaled


def synthetic_trainer(cfg: Config, folder: Path, d: Dist | None = None) -> Trainer:
    """The real Trainer (model, optimizer, step) of a config on a synthetic store with two batches of windows."""
    synthetic_store(folder, cfg, 2 * cfg.training.batch_size)
    torch.manual_seed(cfg.training.seed)
    return Trainer(cfg, folder, d or Dist(), log=lambda *a, **k: None)


def write_result(name: str, result: dict, path: Path | None = None) -> Path:
    """Write a result to `path` (default bench/results/<name>.json), with the load average at the end."""
    result.setdefault("machine", {})["load1_end"] = load1()
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def finish(name: str, result: dict, path: Path, seconds: float) -> int:
    """Write a result (made JSON-safe) to `path`, say so with the time taken and the load, and give the exit code."""
    from marketgpt.evaluate.scoring import json_safe

    result = json_safe(result)
    path = write_result(name, result, path)
    print(f"{seconds / 60:.1f} minutes; load average now {result['machine']['load1_end']}; wrote {path}")
    return 0
