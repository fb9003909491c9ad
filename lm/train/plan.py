"""What a run trains on and for how long: the encoded corpus, its train/validation items, the task's
objective, the stream of batches every rank draws and the number of optimizer steps in each epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lm.config import Params
from lm.data.batches import RowItems, WindowItems, make_items
from lm.data.encoded import Encoded
from lm.data.objectives import make_objective, train_labels
from lm.data.split import load_split
from lm.errors import LmError
from lm.train.distributed import Dist
from lm.train.stream import TrainStream, class_weights

# train.min_steps: auto. A language model keeps improving for thousands of steps on a small corpus
# (TinyStories clm: perplexity 53 after 634 steps, 36 after 2040); a masked LM learns from only mask_prob of
# the positions, so it needs more (WikiText-2 mlm: validation loss 5.42 after 2000 steps, 4.72 after 3250 of
# 4000); a classifier on a few thousand labels peaks within ~2 epochs and then overfits.
AUTO_MIN_STEPS = {"classify": 600, "clm": 2000, "mlm": 4000}


def min_steps_for(params: Params) -> int | None:
    m = params.train.min_steps
    return AUTO_MIN_STEPS[params.task] if m == "auto" else m


def epochs_for(stream: TrainStream, epochs: int, min_steps: int | None, max_steps: int | None) -> int:
    """train.epochs, raised until the run makes at least train.min_steps optimizer steps: a small corpus
    (a few thousand windows) would otherwise stop after a few dozen updates, long before it has learnt
    what it can; a large one is unaffected. Capped at 10,000 epochs."""
    if not min_steps or stream.steps_in_epoch(0) == 0:
        return epochs
    target = min(min_steps, max_steps) if max_steps else min_steps
    epochs = max(epochs, min(-(-target // stream.steps_in_epoch(0)), 10_000))
    while sum(stream.schedule(epochs, max_steps)) < target and epochs < 10_000:  # window counts vary by epoch
        epochs += 1
    return epochs


@dataclass
class TrainData:
    enc: Encoded
    train_rows: np.ndarray  # document indices of the train split
    train_items: RowItems | WindowItems
    val_items: RowItems | WindowItems
    objective: Any  # lm.data.objectives: ClassifyObjective, MaskedLMObjective or CausalLMObjective
    stream: TrainStream  # this rank's micro-batches of every step
    plan: list[int]  # optimizer steps in each epoch

    @property
    def total_steps(self) -> int:
        return sum(self.plan)

    def step_batches(self, epoch: int, step_in_epoch: int) -> list[dict[str, Any]]:
        """This rank's micro-batches of the step at (epoch, step_in_epoch), prepared by the objective (mlm
        masks, target counts) on the host's CPU tensors, before they go to the device."""
        return [
            self.objective.prepare(b, train=True, epoch=epoch)
            for b in self.stream.micro_batches(epoch, step_in_epoch)
        ]

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run checks to be sure it trains on the same data."""
        return {
            "tokenizer_hash": str(self.enc.meta.get("tokenizer_hash")),
            "n_docs": self.enc.n_docs,
            "n_train": len(self.train_rows),
            "train_rows_sum": int(np.asarray(self.train_rows, dtype=np.int64).sum()),
        }


def open_data(params: Params, encoded_dir: Path, split_dir: Path, world: Dist) -> TrainData:
    """The run's data for this rank; refuses a train split smaller than one optimizer step."""
    cfg = params.train
    enc = Encoded.open(encoded_dir)
    enc.check_task(params.task)
    parts = load_split(split_dir)
    train_items = make_items(enc, parts["train"], params.task, enc.max_len)
    val_items = make_items(enc, parts["val"], params.task, enc.max_len)
    objective = make_objective(params, enc, parts["train"])
    stream = TrainStream(
        train_items,
        seed=params.seed,
        batch_size=cfg.batch_size,
        grad_accum_steps=cfg.grad_accum_steps,
        rank=world.rank,
        world_size=world.world_size,
        sampler=cfg.sampler,
        weights=class_weights(train_labels(params, enc, parts["train"]))
        if cfg.sampler == "weighted"
        else None,
        bucket_by_length=cfg.bucket_by_length and params.task == "classify",  # windows are never padded
        tokens_per_epoch=cfg.tokens_per_epoch if params.task in ("clm", "mlm") else None,
    )
    plan = stream.schedule(
        epochs_for(stream, cfg.epochs, min_steps_for(params), cfg.max_steps), cfg.max_steps
    )
    if sum(plan) == 0:
        raise LmError(
            f"train: {len(train_items)} training items are fewer than one step of train.batch_size x "
            f"train.grad_accum_steps x {world.world_size} processes = {stream.global_batch}; "
            "lower train.batch_size"
        )
    return TrainData(enc, parts["train"], train_items, val_items, objective, stream, plan)
