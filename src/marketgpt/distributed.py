"""Process-group plumbing for DistributedDataParallel under torchrun or srun (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def init_distributed() -> Dist:
    """Join the process group when launched by torchrun (or srun with MASTER_ADDR set), else run alone."""
    world = _env_int("WORLD_SIZE", default=1)
    if world == 1 or not os.environ.get("MASTER_ADDR"):
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return Dist(device=device)
    rank = _env_int("RANK", "SLURM_PROCID", default=0)
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)
    local_world = _env_int("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", default=world)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return Dist(rank, world, local_rank, local_world, device)


def gradient_group(d: Dist):
    """A process group of its own for DDP's gradient all-reduce.

    DDP keeps its process group alive until the interpreter exits. If that were the default group, the tensors
    of the last collectives (losses, the final barrier) could be released by its worker threads during
    interpreter teardown, where taking the GIL aborts the process ("terminate called without an active
    exception"). With DDP on a group of its own, `shutdown` destroys the default group and joins its threads
    while Python is fully alive.
    """
    return dist.new_group() if d.enabled else None


def all_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over all ranks (returns a copy on the tensor's device)."""
    values = values.clone()
    if d.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, d: Dist):
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
