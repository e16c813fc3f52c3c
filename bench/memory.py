"""Peak memory of one training step of each case config at the guide's batch size (32 windows per GPU).

CUDA (when present): `torch.cuda.max_memory_allocated` around one `Trainer.train_step` (bf16 autocast, fused AdamW)
after a warm-up step, so the AdamW state exists; `max_memory_reserved` (what nvidia-smi shows, minus the CUDA
context of ~0.5 GB) printed next to it.

CPU (no GPU): an estimate. torch's MemTracker (a dispatch mode that follows every tensor's storage: parameters,
gradients, optimizer state, activations, temporaries) measures the peak of one real `Trainer.train_step` at batch
8 and 16 after a warm-up step, in fp32 (the CPU trainer) and under bf16 autocast (the CUDA trainer's precision);
the peak at batch 32 is extrapolated linearly (per-window activations scale with the batch; below batch ~8 the
peak falls at another point of the step, so smaller batches would underestimate it). Case C is also measured at
batch 32 directly, to check the extrapolation. It counts tensors only: no allocator caching or fragmentation, no
CUDA context or cuBLAS workspace. About 5 minutes on 2 cores (Case A at batch 16 is ~40 s per step).

Writes bench/results/memory.json. Run: `python bench/memory.py`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import case_config, describe, load1, machine, synthetic_trainer, write_result  # noqa: E402

from marketgpt.distributed import Dist  # noqa: E402

GUIDE_GB = {"a": "15-20", "b": "10-15", "c": "5-10"}   # the guide's "GPU memory per GPU"
BATCH = 32
SMALL = (8, 16)    # the batches measured on CPU, extrapolated to BATCH
GB = 2 ** 30


def trainer_for(case: str, batch: int, dev: torch.device, folder: Path, bf16: bool):
    cfg = case_config(case, [f"training.batch_size={batch}", f"training.checkpoint_dir={folder}"])
    trainer = synthetic_trainer(cfg, folder, Dist(device=dev))
    if bf16 and dev.type == "cpu":
        trainer.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    trainer.train_step(trainer.train_windows[:batch])       # warm-up: creates the AdamW state
    return trainer


def cuda_peak(case: str, dev: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(case, BATCH, dev, Path(tmp), bf16=True)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        trainer.train_step(trainer.train_windows[:BATCH])
        torch.cuda.synchronize(dev)
        out = {"allocated_gb": torch.cuda.max_memory_allocated(dev) / GB,
               "reserved_gb": torch.cuda.max_memory_reserved(dev) / GB}
        del trainer
    torch.cuda.empty_cache()
    return out


def tracked_peak(case: str, batch: int, bf16: bool) -> float:
    """Peak bytes of tensors alive during one CPU training step (MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    with tempfile.TemporaryDirectory() as tmp:
        trainer = trainer_for(case, batch, torch.device("cpu"), Path(tmp), bf16)
        tracker = MemTracker()
        tracker.track_external(trainer.model, trainer.optimizer)
        with tracker:
            trainer.train_step(trainer.train_windows[:batch])
        peak = sum(v["Total"] for v in tracker.get_tracker_snapshot("peak").values())
        del trainer, tracker
    return peak


def main() -> int:
    dev = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    mach = machine(dev)
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']}")
    result = {"benchmark": "memory", "machine": mach, "batch_size": BATCH, "cases": {}}
    if dev.type == "cuda":
        result["method"] = "torch.cuda.max_memory_allocated of one train_step (bf16 autocast, fused AdamW)"
        print(f"peak memory of one training step at batch {BATCH} ({result['method']}):")
        for case in ("a", "b", "c"):
            r = cuda_peak(case, dev)
            result["cases"][case] = {**r, "guide_gb": GUIDE_GB[case]}
            print(f"  case {case}: {r['allocated_gb']:6.2f} GB allocated, {r['reserved_gb']:6.2f} GB reserved "
                  f"(guide: {GUIDE_GB[case]} GB per GPU)", flush=True)
    else:
        result["method"] = (f"CPU estimate: MemTracker peak of one real train_step at batch {SMALL[0]} and "
                            f"{SMALL[1]}, extrapolated linearly to batch {BATCH}; tensors only")
        print(f"no GPU: CUDA peak memory skipped; CPU estimate instead (MemTracker, tensors only, batch {SMALL[0]} "
              f"and {SMALL[1]} extrapolated to {BATCH}):")
        for case in ("a", "b", "c"):
            row = {"guide_gb": GUIDE_GB[case]}
            for precision, bf16 in (("fp32", False), ("bf16_autocast", True)):
                lo, hi = SMALL
                p_lo, p_hi = tracked_peak(case, lo, bf16), tracked_peak(case, hi, bf16)
                per_window = (p_hi - p_lo) / (hi - lo)
                row[f"{precision}_gb"] = (p_hi + (BATCH - hi) * per_window) / GB
                row[f"{precision}_per_window_mb"] = per_window / 2 ** 20
            if case == "c":
                row["fp32_measured_at_32_gb"] = tracked_peak(case, BATCH, False) / GB
            result["cases"][case] = row
            check = (f"; measured at batch {BATCH}: {row['fp32_measured_at_32_gb']:.2f} GB"
                     if "fp32_measured_at_32_gb" in row else "")
            print(f"  case {case}: fp32 {row['fp32_gb']:6.2f} GB, bf16 autocast {row['bf16_autocast_gb']:6.2f} GB "
                  f"(+{row['bf16_autocast_per_window_mb']:.0f} MB per window); guide: {GUIDE_GB[case]} GB "
                  f"per GPU{check}", flush=True)
    print(f"load average now {load1()}; wrote {write_result('memory', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
