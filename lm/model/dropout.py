"""Dropout with nn.Dropout's semantics and a cheaper random source on CPU.

On CPU, nn.Dropout draws its mask with `bernoulli_`, which costs about 4x more than drawing 31-bit random
integers with `random_` and comparing them with a threshold; with dropout on the embeddings, every residual
branch and the attention weights, that draw was ~15% of a CPU training step. Each element is kept with
probability 1 - p (p rounded to a multiple of 2^-31) and scaled by 1 / (1 - p); the mask is kept as bools
for backward. The draw uses the global CPU generator, so `torch.manual_seed` reproduces it and gradient
checkpointing (which restores the RNG state) recomputes the same mask. Other devices use F.dropout, whose
kernels are already fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_RANGE = 1 << 31  # random_() on int32 draws uniformly from [0, 2^31)


class _CpuDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        keep = torch.empty(x.shape, dtype=torch.int32, device=x.device).random_() >= round(p * _RANGE)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or round(p * _RANGE) >= _RANGE:  # p within 2^-32 of 1: no int32 threshold
        return F.dropout(x, p, training=True)
    return _CpuDropout.apply(x, p)


class Dropout(nn.Module):
    """Drop-in for nn.Dropout (same `p`, same train/eval behaviour, no parameters or buffers)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
