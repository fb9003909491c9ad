"""The step phase of the loop: one optimizer step over the accumulated micro-batches of every rank.

Loss normalisation: every micro-batch returns a loss SUM and its target count; the count of the whole
accumulated step is all-reduced first, and each micro-batch backpropagates sum * world / global_count. DDP
averages gradients over ranks (dividing by world), so the update equals one big batch's mean loss exactly,
whatever the split into processes and micro-batches. Gradients are all-reduced once per optimizer step (DDP
`no_sync` on every micro-step but the last), and clipping sees the whole accumulated gradient.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lm.data.objectives import to_device
from lm.errors import LmError
from lm.train.distributed import Dist
from lm.train.stream import TrainStream, step_seed

if TYPE_CHECKING:
    from lm.train.state import Progress
    from lm.train.trainee import Trainee


def autocast_ctx(device: torch.device, amp: str):
    """One switch for mixed precision: bf16/fp16 autocast, or nothing."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_amp(device: torch.device, amp: str) -> None:
    """Refuse, in one line naming train.amp, mixed precision the device or this torch cannot run, instead of
    failing mid-step or (what autocast does with a dtype it lacks) silently training in float32: bf16 needs an
    Ampere or newer GPU on CUDA and macOS 14 on MPS; fp16 on MPS needs a GradScaler there (torch 2.8 or newer)."""
    if amp == "none":
        return
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if not torch.amp.is_autocast_available(device.type):
        raise LmError(
            f"train.amp={amp}: this torch has no autocast on {device.type}: set train.amp: none, or upgrade torch"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LmError(
            f"train.amp=bf16 needs a GPU with bfloat16 (Ampere or newer), not "
            f"{torch.cuda.get_device_name(device)}: set train.amp: fp16"
        )
    if amp == "bf16" and device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise LmError("train.amp=bf16 on MPS needs macOS 14 or newer: set train.amp: fp16 or none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.autocast(device_type=device.type, dtype=dtype)
    if any("Disabling autocast" in str(w.message) for w in caught):
        raise LmError(
            f"train.amp={amp}: this torch's autocast on {device.type} does not support {dtype}: set "
            "train.amp: none or the other half-precision type"
        )
    if amp == "fp16" and device.type == "mps" and not _grad_scaler_works(device):
        raise LmError(
            "train.amp=fp16 on MPS needs a GradScaler there (torch 2.8 or newer): set train.amp: bf16 or "
            "none, or upgrade torch"
        )


def _grad_scaler_works(device: torch.device) -> bool:
    """Whether torch.amp.GradScaler can unscale gradients on `device` (older torch cannot on MPS)."""
    param = torch.zeros(1, device=device, requires_grad=True)
    param.grad = torch.ones(1, device=device)
    scaler = torch.amp.GradScaler(device.type)
    try:
        scaler.scale(param.sum())  # creates the scale on the device
        scaler.unscale_(torch.optim.SGD([param], lr=0.0))
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


@dataclass
class StepStats:
    loss_sum: float  # this rank's loss sum over the step's micro-batches
    count: float  # targets of the step over all ranks
    tokens: int  # real tokens this rank processed
    grad_norm: float  # of the whole accumulated (and all-reduced) gradient, before clipping


def optimizer_step(
    *,
    model: nn.Module,
    wrapped: nn.Module,
    ddp: nn.parallel.DistributedDataParallel | None,
    objective,
    micro: list[dict],
    world: Dist,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float | None,
    amp: str,
) -> StepStats:
    """Accumulate the micro-batches' gradients, clip the total, step the optimizer."""
    (global_count,) = world.all_reduce_sum([float(sum(b["count"] for b in micro))])
    loss_sum, tokens = 0.0, 0
    for m, batch in enumerate(micro):
        batch = to_device(batch, world.device)
        tokens += int(batch["attention_mask"].sum())
        last = m == len(micro) - 1
        with ddp.no_sync() if ddp is not None and not last else nullcontext():  # sync once, on the last
            with autocast_ctx(world.device, amp):
                part = objective.loss_sum(wrapped, batch)
            scaler.scale(part * world.world_size / max(global_count, 1.0)).backward()
        loss_sum += float(part.detach())
    scaler.unscale_(optimizer)  # no-op without fp16; clipping must see true gradients
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss_sum, global_count, tokens, float(norm))


def train_step(
    trainee: Trainee,
    objective,
    stream: TrainStream,
    progress: Progress,
    *,
    seed: int,
    world: Dist,
    grad_clip: float | None,
    amp: str,
) -> dict[str, Any]:
    """The step at `progress`'s position: its batches, the update, the schedule and the weight average;
    advances `progress` and returns the step's log row (train_loss over all ranks)."""
    t0 = time.perf_counter()
    torch.manual_seed(step_seed(seed, progress.step, world.rank))  # dropout: a function of the step
    micro = [
        objective.prepare(b, train=True, epoch=progress.epoch)
        for b in stream.micro_batches(progress.epoch, progress.step_in_epoch)
    ]
    lr = trainee.optimizer.param_groups[0]["lr"]
    stats = optimizer_step(
        model=trainee.model,
        wrapped=trainee.wrapped,
        ddp=trainee.ddp,
        objective=objective,
        micro=micro,
        world=world,
        optimizer=trainee.optimizer,
        scaler=trainee.scaler,
        grad_clip=grad_clip,
        amp=amp,
    )
    trainee.scheduler.step()
    progress.step += 1
    if trainee.average is not None:
        trainee.average.update(progress.step)
    progress.step_in_epoch += 1
    loss_all, tokens_all = world.all_reduce_sum([stats.loss_sum, float(stats.tokens)])
    progress.tokens_seen += int(tokens_all)
    train_loss = loss_all / max(stats.count, 1.0)
    progress.running.append(train_loss)
    return {
        "step": progress.step,
        "train_loss": train_loss,
        "lr": lr,
        "grad_norm": stats.grad_norm,
        "tokens_per_s": tokens_all / max(time.perf_counter() - t0, 1e-9),
    }
