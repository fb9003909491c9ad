"""The validate phase of the loop: the validation loss (and a classifier's ROC-AUC) every train.eval_every
steps, which weights to export, and early stopping.

Validation runs on the weights that would be exported (the moving average when train.ema_decay is set), so
the number that selects a step is the number of what is shipped.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from lm.data.objectives import ClassifyObjective, to_device
from lm.model.export import unwrap
from lm.train.distributed import Dist
from lm.train.ema import WeightAverage
from lm.train.step import autocast_ctx

if TYPE_CHECKING:
    from lm.config import Params
    from lm.train.logging import TrainLogger
    from lm.train.state import Progress
    from lm.train.trainee import Trainee


@torch.no_grad()
def validate(model: nn.Module, objective, items, batch_size: int, world: Dist, amp: str) -> dict[str, float]:
    """Mean loss over `items`, and for a classifier the ROC-AUC of its scores, sharded over ranks (every rank
    runs the unwrapped model, never the DDP wrapper, so no rank waits on a collective inside forward) and
    all-reduced. The AUC is None when the items hold one class only."""
    from sklearn.metrics import roc_auc_score

    plain = unwrap(model)
    was_training = plain.training
    plain.eval()
    total, count = 0.0, 0.0
    classify = isinstance(objective, ClassifyObjective)
    scores = np.zeros(len(items) if classify else 0)
    labels = np.zeros(len(items) if classify else 0)
    mine = np.arange(world.rank, len(items), world.world_size)
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo : lo + batch_size]
        batch = objective.prepare(items.batch(idx), train=False)
        if batch["count"] == 0:
            continue
        batch = to_device(batch, world.device)
        with autocast_ctx(world.device, amp):
            if classify:
                logits, loss = objective.logits_and_loss_sum(plain, batch)
                scores[idx] = logits.float().cpu().numpy()
                labels[idx] = batch["positive"].cpu().numpy()
            else:
                loss = objective.loss_sum(plain, batch)
            total += float(loss)
        count += batch["count"]
    total, count = world.all_reduce_sum([total, count])
    out: dict[str, float] = {"val_loss": total / count if count else float("nan")}
    if classify:
        if world.enabled:  # every rank filled its own items; the sum assembles the whole split everywhere
            scores = np.asarray(world.all_reduce_sum(scores.tolist()))
            labels = np.asarray(world.all_reduce_sum(labels.tolist()))
        both = 0 < labels.sum() < len(labels)
        out["val_roc_auc"] = float(roc_auc_score(labels > 0.5, scores)) if both else None
    plain.train(was_training)
    return out


def selection_metric(params: Params) -> str:
    """What picks the exported checkpoint and drives early stopping: train.select_by, where 'auto' is the
    validation ROC-AUC for a classifier (what users judge it by; the loss also rewards confident calibration)
    and the validation loss for the language models."""
    choice = params.train.select_by
    if choice == "auto":
        return "val_roc_auc" if params.task == "classify" else "val_loss"
    return choice


def exported_state(model: nn.Module, average: WeightAverage | None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights that would be exported now: the moving average when there is one."""
    with average.swapped_in() if average is not None else nullcontext():
        return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


class Validator:
    """Validates, records the pass in the progress and the step's log row, and judges it: better than every
    earlier pass (these weights are the ones to export), or one more pass without improvement (train.patience
    of them stop the run)."""

    def __init__(self, params: Params, objective, items, world: Dist, logger: TrainLogger, total_steps: int):
        self.metric = selection_metric(params)
        self.objective, self.items, self.world, self.logger, self.total_steps = (
            objective,
            items,
            world,
            logger,
            total_steps,
        )
        self.batch_size, self.amp, self.patience = (
            params.eval.batch_size,
            params.train.amp,
            params.train.patience,
        )
        self.every = params.train.eval_every

    def due(self, step: int) -> bool:
        """Every train.eval_every steps, and after the last step."""
        return step % self.every == 0 or step == self.total_steps

    def validate(self, trainee: Trainee, progress: Progress, row: dict[str, Any]) -> bool:
        """One validation pass after the step of `row`; True when it is the best so far."""
        with trainee.average.swapped_in() if trainee.average is not None else nullcontext():
            val = (
                validate(trainee.wrapped, self.objective, self.items, self.batch_size, self.world, self.amp)
                if len(self.items)
                else {"val_loss": float("nan")}
            )
        lr = row["lr"]
        avg = float(np.mean(progress.running))
        progress.running.clear()
        row.update(val, train_loss_avg=avg)
        progress.history.append(
            {"step": progress.step, "epoch": progress.epoch, "train_loss": avg, **val, "lr": lr}
        )
        auc = val.get("val_roc_auc")
        self.logger.print(
            f"step {progress.step:>5}/{self.total_steps} epoch {progress.epoch} train_loss {avg:.4f} "
            f"val_loss {val['val_loss']:.4f}"
            + (f" val_roc_auc {auc:.4f}" if auc is not None else "")
            + f" lr {lr:.2e}"
        )
        # lower is better: the loss, or minus the AUC (a one-class validation split falls back to the loss)
        value = -auc if self.metric == "val_roc_auc" and auc is not None else val["val_loss"]
        return self._judge(progress, value)

    def _judge(self, progress: Progress, value: float) -> bool:
        if math.isnan(value) or value < progress.best_val:
            if not math.isnan(value):
                progress.best_val, progress.best_step = value, progress.step
            progress.bad_evals = 0
            return True
        progress.bad_evals += 1
        if self.patience and progress.bad_evals >= self.patience:
            self.logger.print(f"early stop: no {self.metric} improvement in {self.patience} evaluations")
            progress.stopped_early = True
        return False
