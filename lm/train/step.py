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
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lm.data.objectives import to_device
from lm.errors import LmError
from lm.train.stream import TrainStream, step_seed
from lm.train.distributed import Dist

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
    """Refuse, in one line naming train.amp, an autocast dtype the device cannot run: bf16 needs an Ampere or
    newer GPU on CUDA and macOS 14 on MPS. (fp16 runs everywhere, with the GradScaler on CUDA, MPS and CPU.)"""
    if amp != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LmError(f"train.amp=bf16 needs a GPU with bfloat16 (Ampere or newer), not "
                      f"{torch.cuda.get_device_name(device)}: set train.amp: fp16")
    if device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise LmError("train.amp=bf16 on MPS needs macOS 14 or newer: set train.amp: fp16")


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
        with (ddp.no_sync() if ddp is not None and not last else nullcontext()):  # sync once, on the last
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


def train_step(trainee: Trainee, objective, stream: TrainStream, progress: Progress, *, seed: int, world: Dist,
               grad_clip: float | None, amp: str) -> dict[str, Any]:
    """The step at `progress`'s position: its batches, the update, the schedule and the weight average;
    advances `progress` and returns the step's log row (train_loss over all ranks)."""
    t0 = time.perf_counter()
    torch.manual_seed(step_seed(seed, progress.step, world.rank))  # dropout: a function of the step
    micro = [objective.prepare(b, train=True, epoch=progress.epoch)
             for b in stream.micro_batches(progress.epoch, progress.step_in_epoch)]
    lr = trainee.optimizer.param_groups[0]["lr"]
    stats = optimizer_step(
        model=trainee.model, wrapped=trainee.wrapped, ddp=trainee.ddp, objective=objective, micro=micro, world=world,
        optimizer=trainee.optimizer, scaler=trainee.scaler, grad_clip=grad_clip, amp=amp,
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
        "step": progress.step, "train_loss": train_loss, "lr": lr, "grad_norm": stats.grad_norm,
        "tokens_per_s": tokens_all / max(time.perf_counter() - t0, 1e-9),
    }
