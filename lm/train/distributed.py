"""All DDP plumbing in one place: where this process stands (rank, world size, local rank, read once from the
launcher's environment), which device it computes on, rank-0 I/O, all-reduced sums, and a process group that
is always destroyed.

Launchers. `lm train` starts torchrun itself when train.nproc or train.nnodes asks for more than one process
(stages/train.py). A process that some other launcher already started is recognised and trains as the rank it
was given, never launching again:
- torchrun (or anything that sets torchrun's variables): WORLD_SIZE with RANK and/or LOCAL_RANK;
- SLURM: one `srun` step of several tasks (SLURM_STEP_NUM_TASKS > 1; an sbatch script's own shell also has
  SLURM_NTASKS and SLURM_PROCID but is no step of several tasks): rank SLURM_PROCID, world
  SLURM_STEP_NUM_TASKS, local rank SLURM_LOCALID; the process group meets at MASTER_ADDR:MASTER_PORT when
  set, else at train.rdzv_endpoint, else on the step's first node, port 29500.
The global rank decides everything shared (rank 0 writes files; ranks shard the data); the local rank only
picks the GPU.

The model code never knows it is distributed; the loop asks this module whether it should write files and
how to combine numbers across processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lm.errors import LmError, host_port

SLURM_PORT = 29500  # torch's default MASTER_PORT, for a SLURM step with no address given


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1  # processes on this machine (they share its cores)

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

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """`t` (on this process's device) summed over all ranks, in place, as a tensor: the host does not wait
        for the result (NCCL queues the collective on the device), so a training step can all-reduce its
        counts without a synchronisation."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank: decisions that only rank 0 can make (it alone may see a file)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@dataclass(frozen=True)
class Placement:
    """Where the launcher put this process."""

    launcher: str | None  # "torchrun", "slurm", or None (a plain process)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master: tuple[str, int] | None = (
        None  # where the process group meets, when the launcher did not say (SLURM)
    )


def placement(env: Mapping[str, str] | None = None, endpoint: str | None = None) -> Placement:
    """This process's place, from torchrun's or SLURM's environment (`env`, default os.environ); `endpoint` is
    train.rdzv_endpoint, the meeting point of a SLURM step that sets no MASTER_ADDR."""
    env = os.environ if env is None else env
    launcher = _launcher(env)
    if launcher == "torchrun":
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", env.get("LOCAL_RANK", "0")))
        local_rank = int(env.get("LOCAL_RANK", rank))
        return Placement("torchrun", rank, world, local_rank, int(env.get("LOCAL_WORLD_SIZE", world)))
    if launcher == "slurm":
        tasks = int(env["SLURM_STEP_NUM_TASKS"])
        nodes = max(1, int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")) or "1"))
        master = None
        if not ("MASTER_ADDR" in env and "MASTER_PORT" in env):
            if endpoint:
                master = host_port(endpoint)
            else:
                master = (
                    first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")),
                    SLURM_PORT,
                )
        return Placement(
            "slurm",
            int(env["SLURM_PROCID"]),
            tasks,
            int(env.get("SLURM_LOCALID", "0")),
            -(-tasks // nodes),
            master,
        )
    return Placement(None)


def _launcher(env: Mapping[str, str]) -> str | None:
    if "WORLD_SIZE" in env and ("RANK" in env or "LOCAL_RANK" in env):
        return "torchrun"
    if int(env.get("SLURM_STEP_NUM_TASKS", "1") or "1") > 1 and "SLURM_PROCID" in env:
        return "slurm"
    return None


def launched_externally(env: Mapping[str, str] | None = None) -> bool:
    """True in a process that torchrun or a SLURM step started (it must train, not launch again)."""
    return _launcher(os.environ if env is None else env) is not None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise LmError(
            "running under srun with no node list (SLURM_STEP_NODELIST): set train.rdzv_endpoint to "
            "host:port of the first task's machine"
        )
    prefix, ranges = m.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def pick_device(requested: str, local_rank: int, world_size: int = 1) -> torch.device:
    """train.device -> this process's device. auto: CUDA (GPU local_rank), else MPS for a single process, else
    CPU. Asking for a device this machine lacks is an error naming train.device."""
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if requested == "auto":
        requested = "cuda" if cuda else "mps" if mps and world_size == 1 else "cpu"
    if requested == "cuda":
        if not cuda:
            raise LmError(
                "train.device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False): set "
                "train.device: auto or cpu, or install a CUDA build of torch"
            )
        return torch.device(
            "cuda", local_rank % torch.cuda.device_count()
        )  # a launcher may show one GPU per task
    if requested == "mps":
        if not mps:
            raise LmError(
                "train.device=mps but this machine has no Apple MPS device "
                "(torch.backends.mps.is_available() is False): set train.device: auto or cpu"
            )
        if world_size > 1:
            raise LmError(
                "train.device=mps trains in one process (no distributed backend runs on MPS): set "
                "train.nproc: 1, or train.device: cpu"
            )
        return torch.device("mps")
    return torch.device("cpu")


def to_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """model.to(device); on MPS, which has no float64, after `float64_buffers_to_float32`."""
    if device.type == "mps":
        float64_buffers_to_float32(model)
    return model.to(device)


def float64_buffers_to_float32(model: torch.nn.Module) -> torch.nn.Module:
    """The float64 buffers some parts keep for exactness (the sinusoidal table, quadrature nodes; cast to the
    compute dtype at use anyway) as float32, in place."""
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf.dtype == torch.float64:
                setattr(module, name, buf.float())
    return model


@contextmanager
def distributed(
    device_request: str = "auto", backend: str = "auto", endpoint: str | None = None
) -> Iterator[Dist]:
    """Initialise the process group when launched by torchrun or a SLURM step (gloo on CPU, NCCL on GPU); tear
    it down. `endpoint`: train.rdzv_endpoint (only a SLURM step without MASTER_ADDR reads it)."""
    place = placement(endpoint=endpoint)
    device = pick_device(device_request, place.local_rank, place.world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    started = False
    if place.world_size > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if chosen == "nccl" and device.type != "cuda":
            raise LmError(
                f"train.backend=nccl needs CUDA GPUs but this process runs on {device.type}: set "
                "train.backend: gloo (or auto)"
            )
        init = f"tcp://{place.master[0]}:{place.master[1]}" if place.master else "env://"
        dist.init_process_group(
            backend=chosen, init_method=init, rank=place.rank, world_size=place.world_size
        )
        started = True
    try:
        yield Dist(
            rank=place.rank,
            world_size=place.world_size,
            local_rank=place.local_rank,
            device=device,
            local_world_size=place.local_world_size,
        )
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()
