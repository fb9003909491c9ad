"""The training state, described once: what a checkpoint holds and how it maps to the file's dict.

`Progress` is the loop's own position and bookkeeping (step, epoch, best value, early-stopping counter, the
logged rows); `TrainingState` adds the modules' state dicts, the RNG states and what a resumed run checks
(params, data fingerprint). `Checkpointer.save` writes `TrainingState.to_dict()` and a resume reads
`TrainingState.from_dict()`, so the two can never disagree about a key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lm.train.logging import StepLog

CHECKPOINT_FORMAT = 1


@dataclass
class Progress:
    """Everything besides the modules' state dicts that a checkpoint must carry to resume exactly."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val: float = (
        math.inf
    )  # the selection metric's best value, lower is better (val_loss or -val_roc_auc)
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    seconds: float = 0.0
    running: list[float] = field(default_factory=list)  # step losses since the last validation
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per validation pass
    log: StepLog = field(default_factory=StepLog)  # one row per optimizer step

    @property
    def best_value(self) -> float | None:
        return None if math.isinf(self.best_val) else self.best_val

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best": {"value": self.best_value, "step": self.best_step, "bad_evals": self.bad_evals},
            "stopped_early": self.stopped_early,
            "tokens_seen": self.tokens_seen,
            "seconds": self.seconds,
            "running": list(self.running),
            "history": list(self.history),
            "log": self.log.state(),
        }

    @classmethod
    def from_state(cls, ck: dict[str, Any]) -> Progress:
        best = ck["best"]
        return cls(
            step=ck["step"],
            epoch=ck["epoch"],
            step_in_epoch=ck["step_in_epoch"],
            best_val=math.inf if best["value"] is None else best["value"],
            best_step=best["step"],
            bad_evals=best["bad_evals"],
            stopped_early=ck["stopped_early"],
            tokens_seen=ck["tokens_seen"],
            seconds=ck["seconds"],
            running=list(ck["running"]),
            history=list(ck["history"]),
            log=StepLog.from_state(ck["log"]),
        )


@dataclass
class TrainingState:
    """The whole training state (house style: a resumed run continues exactly where it stopped). Tensors and
    plain Python values only, so the file loads with torch.load(weights_only=True)."""

    model: dict[str, Any]  # the unwrapped model's state dict (no `module.` / `_orig_mod.` prefixes)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]  # lm.train.checkpoint.rng_state()
    progress: Progress
    best_model: dict[str, Any] | None  # the weights to export so far (kept by rank 0 only)
    ema: list[Any] | None  # WeightAverage.state(), when train.ema_decay is set
    seed: int
    global_batch: int  # batch_size x grad_accum_steps x processes: with the seed, where the data stands
    finished: bool
    params: dict[str, Any]  # the resolved params (Params.model_dump()), checked on resume
    data: dict[str, Any]  # the data fingerprint, checked on resume

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint file's dict; step, epoch, data_position and best_value repeat the progress for
        readers that want them without parsing it."""
        p = self.progress
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "step": p.step,
            "epoch": p.epoch,
            "data_position": {
                "epoch": p.epoch,
                "step_in_epoch": p.step_in_epoch,
                "seed": self.seed,
                "global_batch": self.global_batch,
            },
            "rng": self.rng,
            "progress": p.state(),
            "best_model": self.best_model,
            "ema": self.ema,
            "best_value": p.best_value,
            "finished": self.finished,
            "params": self.params,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, ck: dict[str, Any]) -> TrainingState:
        position = ck["data_position"]
        return cls(
            model=ck["model"],
            optimizer=ck["optimizer"],
            scheduler=ck["scheduler"],
            scaler=ck["scaler"],
            rng=ck["rng"],
            progress=Progress.from_state(ck["progress"]),
            best_model=ck["best_model"],
            ema=ck["ema"],
            seed=position["seed"],
            global_batch=position["global_batch"],
            finished=ck["finished"],
            params=ck["params"],
            data=ck["data"],
        )
