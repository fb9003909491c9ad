"""The position-wise feed-forward network: GELU MLP (GPT-2/BERT) or SwiGLU (Shazeer 2020, LLaMA)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GeluMLP(nn.Module):
    """W2 gelu(W1 x + b1) + b2."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff)
        self.fc_out = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class SwiGLU(nn.Module):
    """W2 (silu(W1 x) * W3 x): a gated unit; W1 and W3 are fused into one projection of width 2*d_ff."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.fc_out = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc_in(x).chunk(2, dim=-1)  # (B, L, d_ff) each
        return self.fc_out(F.silu(gate) * up)


def make_mlp(kind: str, d_model: int, d_ff: int) -> nn.Module:
    if kind == "gelu":
        return GeluMLP(d_model, d_ff)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff)
    raise ValueError(f"unknown mlp {kind!r}")
