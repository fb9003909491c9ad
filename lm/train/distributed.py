"""All DDP plumbing in one place: rank and world size read once from torchrun's environment, rank-0 I/O,
all-reduced sums, and a process group that is always destroyed.

The model code never knows it is distributed; the loop asks this module whether it should write files and
how to combine numbers across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum a few numbers over all ranks (float64 on CPU/GPU; cheap, called once per step/eval)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def in_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextmanager
def distributed(device_request: str = "auto", backend: str = "auto") -> Iterator[Dist]:
    """Initialise the process group when launched by torchrun (gloo on CPU, NCCL on GPU); tear it down."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if world > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=chosen, rank=rank, world_size=world)
        started = True
    try:
        yield Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
