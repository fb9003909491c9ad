"""Language-modelling metrics accumulated over batches: loss, perplexity, accuracy, top-k, bits per byte.

Averaging per-batch means would weight a short last batch like a full one; this accumulator keeps sums
(in float64) and divides once at the end, so the result equals the metric over the concatenated data.
The sums travel as one tensor (:meth:`LmAccumulator.state`) so DDP ranks can all-reduce them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lm.errors import LmError

_FIELDS = ("loss_sum", "n_tokens", "correct", "topk_correct", "n_bytes")


class LmAccumulator:
    """Sums of token-level statistics for masked (mlm) or next-token (clm) prediction.

    >>> acc = LmAccumulator(top_k=5)
    >>> acc.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
    >>> acc.result()["accuracy"]
    0.5
    """

    def __init__(self, top_k: int = 5) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.loss_sum = 0.0  # nats, summed over tokens
        self.n_tokens = 0
        self.correct = 0
        self.topk_correct = 0
        self.n_bytes = 0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add the positions that count: ``logits`` [N, V], ``targets`` [N] (already filtered)."""
        if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
            shapes = f"{tuple(logits.shape)} and {tuple(targets.shape)}"
            raise ValueError(f"expected logits [N, V] and targets [N], got {shapes}")
        if targets.numel() == 0:
            return
        logits = logits.detach().float()  # [N, V]; bf16 logits would round the loss
        targets = targets.detach().long()  # [N]
        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum").double())
        self.n_tokens += int(targets.numel())
        self.correct += int((logits.argmax(dim=-1) == targets).sum())
        k = min(self.top_k, logits.shape[1])
        topk = logits.topk(k, dim=-1).indices  # [N, k]
        self.topk_correct += int((topk == targets[:, None]).any(dim=-1).sum())

    def add_bytes(self, n_bytes: int) -> None:
        """Count the UTF-8 bytes of text covered by the tokens passed to :meth:`update` (bits per byte)."""
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes}")
        self.n_bytes += int(n_bytes)

    def state(self) -> torch.Tensor:
        """The sums as a float64 tensor [5], for ``dist.all_reduce``."""
        return torch.tensor([getattr(self, f) for f in _FIELDS], dtype=torch.float64)

    def load_state(self, state: torch.Tensor) -> None:
        """Replace the sums with ``state`` (e.g. after all-reducing :meth:`state` over ranks)."""
        values = state.detach().cpu().double().tolist()
        if len(values) != len(_FIELDS):
            raise ValueError(f"expected a state of {len(_FIELDS)} values, got {len(values)}")
        self.loss_sum = values[0]
        self.n_tokens, self.correct, self.topk_correct, self.n_bytes = (round(v) for v in values[1:])

    def merge(self, other: LmAccumulator) -> None:
        """Add another accumulator's sums to this one."""
        self.load_state(self.state() + other.state())

    def result(self) -> dict[str, float | int]:
        """Metrics over everything added so far; ``bits_per_byte`` only when bytes were added."""
        if self.n_tokens == 0:
            raise LmError("no target tokens were evaluated (the split is empty or no position was masked)")
        loss = self.loss_sum / self.n_tokens
        out: dict[str, float | int] = {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "accuracy": self.correct / self.n_tokens,
            f"top{self.top_k}_accuracy": self.topk_correct / self.n_tokens,
            "n_tokens": self.n_tokens,
        }
        if self.n_bytes > 0:
            out["bits_per_byte"] = self.loss_sum / math.log(2) / self.n_bytes
        return out
