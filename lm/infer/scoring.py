"""Score a trained model over a split: classifier probabilities, or language-model statistics.

Shared by the evaluate stage and the tests; single process, no gradients, batches in file order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lm.data.masking import IGNORE_INDEX


@torch.no_grad()
def classifier_probs(model: nn.Module, items, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, probabilities) for every item, in item order."""
    model.eval()
    rows, probs = [], []
    for lo in range(0, len(items), batch_size):
        batch = items.batch(np.arange(lo, min(lo + batch_size, len(items))))
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        probs.append(torch.sigmoid(logits.float()).numpy())
        rows.append(batch["rows"].numpy())
    if not probs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(rows), np.concatenate(probs)


@torch.no_grad()
def lm_statistics(model: nn.Module, objective, items, batch_size: int, token_bytes: np.ndarray | None, top_k: int = 5) -> dict:
    """Loss / perplexity / accuracy / top-k (and bits per byte when token_bytes is given) over items."""
    from lm.eval.language import LmAccumulator

    model.eval()
    acc = LmAccumulator(top_k=top_k)
    for lo in range(0, len(items), batch_size):
        batch = objective.prepare(items.batch(np.arange(lo, min(lo + batch_size, len(items)))), train=False)
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, L, V)
        keep = batch["labels"] != IGNORE_INDEX
        targets = batch["labels"][keep]
        acc.update(logits[keep], targets)
        if token_bytes is not None:
            acc.add_bytes(int(token_bytes[targets.numpy()].sum()))
    return acc.result()
