"""What each task predicts and how it is scored: one training loop, three objectives.

An objective turns an item batch into model inputs, and returns the SUM of the loss over what counts
(examples, masked tokens, next tokens) together with that count, so the loop can normalise by the real
number of targets in the whole accumulated, all-process batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lm.data.masking import IGNORE_INDEX, mask_tokens


@dataclass
class Special:
    pad_id: int
    mask_id: int
    special_ids: list[int]
    n_ordinary: int  # ids 0..n_ordinary-1 are ordinary tokens


class ClassifyObjective:
    """BCE on one logit per document; pos_weight = #neg/#pos of the train split counters imbalance."""

    def __init__(self, threshold: float, pos_weight: float | None):
        self.threshold = threshold
        self.pos_weight = pos_weight

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        batch = dict(batch)
        batch["labels"] = (batch["targets"] >= self.threshold).float()
        batch["count"] = len(batch["labels"])
        return batch

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B,)
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"], pos_weight=pw, reduction="sum")


class MaskedLMObjective:
    """Cross-entropy on the masked positions only; dynamic masks in training, seeded masks otherwise."""

    def __init__(self, special: Special, mask_prob: float, eval_seed: int = 0):
        self.special = special
        self.mask_prob = mask_prob
        self.eval_seed = eval_seed

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        batch = dict(batch)
        kwargs = dict(
            mask_prob=self.mask_prob,
            mask_id=self.special.mask_id,
            special_ids=self.special.special_ids,
            n_ordinary=self.special.n_ordinary,
        )
        if train:
            ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], generator=generator, **kwargs)
        else:
            # fixed masks: each row's mask depends only on the seed and the row's index, not on batching
            pairs = [
                mask_tokens(
                    batch["input_ids"][i : i + 1],
                    batch["attention_mask"][i : i + 1],
                    generator=torch.Generator().manual_seed(self.eval_seed * 1_000_003 + int(row)),
                    **kwargs,
                )
                for i, row in enumerate(batch["rows"].tolist())
            ]
            ids = torch.cat([p[0] for p in pairs])
            labels = torch.cat([p[1] for p in pairs])
        batch["input_ids"], batch["labels"] = ids, labels
        batch["count"] = int((labels != IGNORE_INDEX).sum())
        return batch

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, L, V)
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )


class CausalLMObjective:
    """Next-token cross-entropy over every real position of each window."""

    def prepare(self, batch: dict, generator: torch.Generator, train: bool) -> dict:
        batch = dict(batch)
        batch["count"] = int((batch["labels"] != IGNORE_INDEX).sum())
        return batch

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, L, V)
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
