"""What each task predicts and how it is scored: one training loop, three objectives.

An objective turns an item batch into model inputs, and returns the SUM of the loss over what counts
(examples, masked tokens, next tokens) together with that count, so the loop can normalise by the real
number of targets in the whole accumulated, all-process batch. `prepare` is deterministic given the batch
and the epoch (no generator state), which is what makes DDP, accumulation and resume exact.

Here, beside the items and masks, rather than in lm/train: evaluation prepares its batches the same way
(mlm masks with the fixed evaluation seed, clm labels shifted) and must not depend on the training package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lm.data.masking import EVAL_EPOCH, IGNORE_INDEX, drop_tokens, mask_tokens
from lm.errors import LmError

if TYPE_CHECKING:
    from lm.config import Params
    from lm.data.encoded import Encoded


@dataclass
class Special:
    pad_id: int
    mask_id: int
    special_ids: list[int]
    n_ordinary: int  # ids 0..n_ordinary-1 are ordinary tokens


class ClassifyObjective:
    """BCE on one logit per document; pos_weight (#neg/#pos of the train split when positives are rare)
    counters imbalance (None: plain BCE, e.g. when a weighted sampler already balances the classes).

    soft_labels: the target is the share of annotators who judged the text toxic, and BCE against that share
    (not its thresholded 0/1) keeps what the annotators said: a text one in three called toxic ranks above
    one nobody did (the Jigsaw competitions' winning recipe). With 0/1 targets both are the same."""

    def __init__(
        self,
        threshold: float,
        pos_weight: float | None,
        soft_labels: bool = False,
        token_dropout: float = 0.0,
        special: Special | None = None,
        seed: int = 0,
    ):
        if token_dropout > 0 and special is None:
            raise ValueError("token_dropout needs the special token ids")
        self.threshold = threshold
        self.pos_weight = pos_weight
        self.soft_labels = soft_labels
        self.token_dropout, self.special, self.seed = token_dropout, special, seed

    def prepare(self, batch: dict, *, train: bool, epoch: int = 0) -> dict:
        """labels: the BCE targets (the score itself with soft labels, else 0/1 at the threshold); positive:
        the 0/1 class that metrics such as the validation ROC-AUC are computed on."""
        batch = dict(batch)
        if train and self.token_dropout > 0:
            s = self.special
            batch["input_ids"] = drop_tokens(
                batch["input_ids"],
                batch["attention_mask"],
                rate=self.token_dropout,
                mask_id=s.mask_id,
                special_ids=s.special_ids,
                rows=batch["rows"],
                seed=self.seed,
                epoch=epoch,
            )
        batch["positive"] = (batch["targets"] >= self.threshold).float()
        batch["labels"] = batch["targets"].float().clamp(0.0, 1.0) if self.soft_labels else batch["positive"]
        batch["count"] = len(batch["labels"])
        return batch

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.logits_and_loss_sum(model, batch)[1]

    def logits_and_loss_sum(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B,)
        pw = None if self.pos_weight is None else torch.tensor(self.pos_weight, device=logits.device)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), batch["labels"], pos_weight=pw, reduction="sum"
        )
        return logits, loss


class MaskedLMObjective:
    """Cross-entropy on the masked positions only. Masks are a hash of (seed, epoch, row, position): new
    every training epoch, fixed for evaluation (EVAL_EPOCH), and the same whatever the batching."""

    def __init__(self, special: Special, mask_prob: float, eval_seed: int = 0):
        self.special = special
        self.mask_prob = mask_prob
        self.seed = eval_seed

    def prepare(self, batch: dict, *, train: bool, epoch: int = 0) -> dict:
        """Masks come from a hash of (seed, epoch, row, position), so batching and sharding cannot change
        them."""
        batch = dict(batch)
        ids, labels = mask_tokens(
            batch["input_ids"],
            batch["attention_mask"],
            mask_prob=self.mask_prob,
            mask_id=self.special.mask_id,
            special_ids=self.special.special_ids,
            n_ordinary=self.special.n_ordinary,
            rows=batch["rows"],
            seed=self.seed,
            epoch=epoch if train else EVAL_EPOCH,
        )
        batch["input_ids"], batch["labels"] = ids, labels
        return with_label_rows(batch)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(
            batch["input_ids"],
            batch["attention_mask"],
            labels=batch["labels"],
            label_rows=batch.get("label_rows"),
        ).loss


class CausalLMObjective:
    """Next-token cross-entropy over every real position of each window."""

    def prepare(self, batch: dict, *, train: bool, epoch: int = 0) -> dict:
        return with_label_rows(dict(batch))

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(
            batch["input_ids"],
            batch["attention_mask"],
            labels=batch["labels"],
            label_rows=batch.get("label_rows"),
        ).loss


def with_label_rows(batch: dict) -> dict:
    """The labelled positions of a language-model batch, found on the host while it is still there: their
    count (the step's loss normaliser) and flat indices (the rows the head computes)."""
    labelled = batch["labels"].reshape(-1) != IGNORE_INDEX
    batch["count"] = int(labelled.sum())
    batch["label_rows"] = labelled.nonzero().squeeze(1)
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


def train_labels(params: Params, enc: Encoded, train_rows: np.ndarray) -> np.ndarray:
    """The 0/1 class of each training row (target >= data.threshold)."""
    return enc.targets[train_rows] >= params.data.threshold


def special_of(enc: Encoded) -> Special:
    """The ids masking needs. Random replacements draw from the ordinary ids when the special ones close the
    vocabulary (lm's BPE), else from the whole vocabulary, as transformers' DataCollatorForLanguageModeling
    does (a pretrained tokenizer keeps its specials among the ordinary ids, e.g. BERT's [CLS] = 101)."""
    roles = enc.roles
    specials = sorted({*enc.meta["special_ids"].values(), *(i for i in roles.values() if i is not None)})
    closing = specials == list(range(enc.vocab_size - len(specials), enc.vocab_size))
    mask = roles.get("mask")
    return Special(
        pad_id=int(roles["pad"]),
        mask_id=int(mask) if mask is not None else -1,
        special_ids=specials,
        n_ordinary=specials[0] if closing and specials else enc.vocab_size,
    )


def make_objective(params: Params, enc: Encoded, train_rows: np.ndarray):
    """The task's objective. classify: pos_weight 'auto' is #neg/#pos of the train split when positives are
    the minority (it up-weights the rare class) and no weighting when they are not (weighting the majority
    further would push every score toward it); none with the weighted sampler (which already balances the
    classes) or with soft labels (a share of 1/3 weighted 16-fold becomes a 0.9 score: every borderline text
    would cross the threshold); a number is used as given."""
    special = special_of(enc)
    if params.task == "classify" and params.train.token_dropout > 0 and special.mask_id < 0:
        raise LmError(
            "train.token_dropout replaces tokens by the mask token, which this tokenizer lacks: set it to 0"
        )
    if params.task == "classify":
        pw = params.train.pos_weight
        pos_weight = float(pw) if not isinstance(pw, str) else None
        if (
            pw == "auto"
            and params.train.sampler != "weighted"
            and not params.train.soft_labels
            and len(train_rows)
        ):
            labels = train_labels(params, enc, train_rows)
            n_pos = int(labels.sum())
            if n_pos == 0:
                raise LmError(
                    "the train split has no positive rows: check data.target_column and data.threshold"
                )
            n_neg = len(labels) - n_pos
            pos_weight = float(n_neg / n_pos) if n_neg > n_pos else None
        return ClassifyObjective(
            params.data.threshold,
            pos_weight,
            soft_labels=params.train.soft_labels,
            token_dropout=params.train.token_dropout,
            special=special,
            seed=params.seed,
        )
    if params.task == "mlm":
        return MaskedLMObjective(special, params.train.mask_prob, eval_seed=params.seed)
    return CausalLMObjective()
