"""The step phase of the loop: one optimizer step over the accumulated micro-batches of every rank, read on
one screen in `optimizer_step` (forward under autocast, scale the loss, backward, clip, step, zero grad; the
loss normalisation is explained there). Gradients are all-reduced once per optimizer step (DDP `no_sync` on
every micro-step but the last), and clipping sees the whole accumulated gradient.

No host synchronisation: the losses, token and target counts stay tensors on the device (the counts are
all-reduced as tensors) and a step returns its log row as 0-d tensors. The loop turns rows into numbers once
per logging interval (train.log_every) and before it validates or saves, so a GPU runs ahead of the host
between logs. tests/test_architecture_step.py checks that nothing here converts a tensor to a number.
"""

from __future__ import annotations

import math
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lm.data.objectives import to_device
from lm.errors import LmError
from lm.train.distributed import Dist

if TYPE_CHECKING:
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
    Ampere or newer GPU on CUDA and macOS 14 on MPS; fp16 on MPS needs a GradScaler there (torch 2.8 or
    newer)."""
    if amp == "none":
        return
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if not torch.amp.is_autocast_available(device.type):
        raise LmError(
            f"train.amp={amp}: this torch has no autocast on {device.type}: set train.amp: none, or upgrade "
            "torch"
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


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype of the step's loss and count sums: float64 (as exact as the Python floats they replace),
    float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


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
) -> dict[str, Any]:
    """Accumulate the micro-batches' gradients, clip the total, step the optimizer. Returns the step's log
    row: train_loss (mean over all ranks' targets), lr, grad_norm (before clipping) and tokens (real tokens
    over all ranks), the tensors 0-d on the device: nothing here waits for the device."""
    device, acc = world.device, accumulation_dtype(world.device)
    # What a step backpropagates: each micro-batch's loss SUM times world / count, where count is the number
    # of targets (examples, masked or next tokens) of the whole step: all micro-batches of all ranks. Summed
    # over the micro-batches and averaged over the ranks by DDP (which divides by world), that is the gradient
    # of the global batch's mean loss, however the batch is split into processes and micro-batches; the
    # logged train_loss is that mean.
    count = torch.full((), sum(b["count"] for b in micro), dtype=acc, device=device)  # a fill: no copy
    count = world.sum_over_ranks(count).clamp(min=1)
    loss_sum = torch.zeros((), dtype=acc, device=device)  # this rank's
    tokens = torch.zeros((), dtype=torch.int64, device=device)
    for m, batch in enumerate(micro):
        batch = to_device(batch, device)
        last = m == len(micro) - 1
        with ddp.no_sync() if ddp is not None and not last else nullcontext():  # sync once, on the last
            with autocast_ctx(device, amp):
                part = objective.loss_sum(wrapped, batch)
            scaler.scale(part * world.world_size / count.float()).backward()
        loss_sum += part.detach().to(acc)
        tokens += batch["attention_mask"].sum()
    scaler.unscale_(optimizer)  # no-op without fp16; clipping must see true gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    scaler.step(optimizer)  # fp16 only: GradScaler reads its inf check on the host, to skip a bad step
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    loss_all, tokens_all = world.sum_over_ranks(torch.stack([loss_sum, tokens.to(acc)]))
    lr = optimizer.param_groups[0]["lr"]  # the step's (the scheduler moves it after the step)
    return {"train_loss": loss_all / count, "lr": lr, "grad_norm": grad_norm, "tokens": tokens_all}


def train_step(
    trainee: Trainee,
    objective,
    micro: list[dict],
    *,
    step: int,
    world: Dist,
    grad_clip: float | None,
    amp: str,
) -> dict[str, Any]:
    """Optimizer step `step` (0-based) of the run over this rank's prepared micro-batches, then the schedule
    and the weight average; returns its log row ({"step": step + 1, **optimizer_step's row}). The caller seeds
    the step's dropout and advances its own progress: the step only computes."""
    row = optimizer_step(
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
    if trainee.average is not None:
        trainee.average.update(step + 1)
    return {"step": step + 1, **row}
