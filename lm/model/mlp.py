"""The position-wise feed-forward network: GELU MLP (GPT-2/BERT) or SwiGLU (Shazeer 2020, LLaMA)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class GeluMLP(nn.Module):
    """W2 gelu(W1 x + b1) + b2 with the exact (erf) GELU; biases when `bias`."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class SwiGLU(nn.Module):
    """W2 (silu(W1 x) * W3 x): a gated unit of hidden width d_ff; W1 and W3 are fused into one projection of
    width 2*d_ff (gate first, then up), so Llama's gate_proj/up_proj load as one concatenated matrix."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, 2 * d_ff, bias=bias)
        self.fc_out = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc_in(x).chunk(2, dim=-1)  # (B, L, d_ff) each
        return self.fc_out(F.silu(gate) * up)


def make_mlp(kind: str, d_model: int, d_ff: int, *, bias: bool = True) -> nn.Module:
    if kind == "gelu":
        return GeluMLP(d_model, d_ff, bias=bias)
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias)
    raise ValueError(f"unknown mlp {kind!r}")
