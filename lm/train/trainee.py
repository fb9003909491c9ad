"""The trainee: the model being trained and everything a step changes with it (optimizer, schedule, fp16 loss
scaler, weight average), built once per run.

`model` is always the plain module, the one checkpointed and exported; `wrapped` is what the steps run (DDP
across processes, then torch.compile), so no state dict ever carries a wrapper's prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lm.train.distributed import to_device
from lm.train.ema import WeightAverage
from lm.train.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from lm.config import Params
    from lm.data.encoded import Encoded
    from lm.train.distributed import Dist
    from lm.train.state import TrainingState


@dataclass
class Trainee:
    model: nn.Module  # the plain module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    average: WeightAverage | None  # train.ema_decay: validated and exported instead of the raw weights
    wrapped: nn.Module  # what the steps run: `model`, or DDP / torch.compile around it (see distribute)
    ddp: nn.parallel.DistributedDataParallel | None = None

    def load(self, state: TrainingState) -> None:
        """Take every module's state from a checkpoint (before `distribute`, so DDP starts from it)."""
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        if self.average is not None:
            self.average.load_state(state.ema)

    def distribute(self, world: Dist, compile: bool) -> None:
        """Wrap the model for the steps: DDP when there are several processes, then torch.compile."""
        if world.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[world.device.index] if world.device.type == "cuda" else None
            )
            self.wrapped = self.ddp
        if compile:
            self.wrapped = torch.compile(self.wrapped)


def build_trainee(
    params: Params, enc: Encoded, total_steps: int, world: Dist, *, fresh: bool
) -> tuple[Trainee, str]:
    """The trainee for `params` on `enc`'s vocabulary, and a note on the weights it starts from.
    train.init_from loads pretrained weights into a fresh run only: a resumed run takes every weight from its
    checkpoint."""
    from lm.model import build_model

    cfg = params.train
    model = to_device(
        build_model(
            params.model,
            task=params.task,
            vocab_size=enc.vocab_size,
            max_len=enc.max_len,
            pad_id=enc.pad_id,
            seed=params.seed,
        ),
        world.device,
    )
    model.train()
    note = ""
    if cfg.init_from and fresh:
        from lm.model.init_from import init_from

        report = init_from(
            model,
            cfg.init_from,
            task=params.task,
            vocab_size=enc.vocab_size,
            tokenizer_hash=enc.meta.get("tokenizer_hash"),
        )
        note = (
            f" init_from={report.source} ({report.kind}, {report.loaded} tensors; new: {len(report.fresh)})"
        )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(world.device.type, enabled=cfg.amp == "fp16")
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    return Trainee(model, optimizer, scheduler, scaler, average, wrapped=model), note
