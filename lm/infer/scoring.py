"""Score a trained model over a split: classifier probabilities, or language-model statistics.

Shared by the evaluate stage and the tests; single process, no gradients, batches in file order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lm.data.masking import IGNORE_INDEX


def top_k_tokens(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely token ids at one position and their probabilities (softmax in fp32)."""
    probs = torch.softmax(logits.float(), dim=-1)
    p, idx = probs.topk(min(k, probs.numel()))
    return [(int(i), float(q)) for q, i in zip(p, idx)]


@torch.no_grad()
def classifier_probs(model: nn.Module, items, batch_size: int, meter=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows, probabilities) for every item, in item order; `meter` (lm.progress) counts the rows."""
    model.eval()
    rows, probs = [], []
    for lo in range(0, len(items), batch_size):
        batch = items.batch(np.arange(lo, min(lo + batch_size, len(items))))
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        probs.append(torch.sigmoid(logits.float()).numpy())
        rows.append(batch["rows"].numpy())
        if meter is not None:
            meter.advance(len(rows[-1]))
    if not probs:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(rows), np.concatenate(probs)


@torch.no_grad()
def lm_statistics(
    model: nn.Module,
    objective,
    items,
    batch_size: int,
    token_bytes: np.ndarray | None,
    top_k: int = 5,
    meter=None,
) -> dict:
    """Loss / perplexity / accuracy / top-k (and bits per byte when token_bytes is given) over items, plus
    `by_position`: the mean loss at each window position (how much a decoder gains from context)."""
    import torch.nn.functional as F

    from lm.eval.language import LmAccumulator

    model.eval()
    acc = LmAccumulator(top_k=top_k)
    loss_at = np.zeros(0, dtype=np.float64)
    count_at = np.zeros(0, dtype=np.int64)
    for lo in range(0, len(items), batch_size):
        batch = objective.prepare(items.batch(np.arange(lo, min(lo + batch_size, len(items)))), train=False)
        logits = model(batch["input_ids"], batch["attention_mask"]).logits  # (B, L, V)
        keep = batch["labels"] != IGNORE_INDEX
        targets = batch["labels"][keep]
        acc.update(logits[keep], targets)
        if token_bytes is not None:
            acc.add_bytes(int(token_bytes[targets.numpy()].sum()))
        positions = keep.nonzero(as_tuple=True)[1].numpy()
        losses = F.cross_entropy(logits[keep].float(), targets, reduction="none").double().numpy()
        width = max(len(loss_at), int(keep.shape[1]))
        loss_at = np.pad(loss_at, (0, width - len(loss_at))) + np.bincount(positions, losses, minlength=width)
        count_at = np.pad(count_at, (0, width - len(count_at))) + np.bincount(positions, minlength=width)
        if meter is not None:
            meter.advance(int(keep.shape[0]))
    out = acc.result()
    out["by_position"] = [
        {"position": int(i), "loss": float(loss_at[i] / count_at[i]), "n_tokens": int(count_at[i])}
        for i in np.flatnonzero(count_at)
    ]
    return out
