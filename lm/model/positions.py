"""Position information: absolute embeddings added to the tokens, and RoPE applied inside attention.

Absolute: `learned` (a trained table, GPT-2/BERT) or `sinusoidal` (the fixed table of Vaswani et al. 2017).
Relative: rotary position embedding (Su et al. 2021, RoFormer) with the *interleaved* pair convention of
RoFormer / meta-llama `llama/model.py`: dims (2i, 2i+1) form one complex number rotated by p * theta^(-2i/d).

Both tables are computed in float64 (an angle of a few hundred radians rounded to float32 is off by ~1e-5)
and cast to the dtype the model computes in (lm.model.precision): a float64 model gets float64 positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lm.errors import LmError
from lm.model.precision import at_least_fp32


def sinusoidal_table(max_len: int, dim: int) -> Tensor:
    """The Transformer's fixed table: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...), float64."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (ceil(dim/2),)
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table


class AbsolutePositions(nn.Module):
    """Adds a position vector to each token embedding; `none` adds nothing (RoPE or causality give order)."""

    def __init__(self, kind: str, max_len: int, dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.max_len = max_len
        if kind == "learned":
            self.table = nn.Embedding(max_len, dim)
        elif kind == "sinusoidal":  # kept in float64 and cast to the embeddings' dtype at use
            self.register_buffer("sin_table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (B, L, E) token embeddings of positions offset .. offset+L-1."""
        if self.kind == "none":
            return x
        L = x.shape[1]
        if offset + L > self.max_len:
            raise LmError(
                f"sequence of {offset + L} tokens exceeds the model's max_len {self.max_len}; crop the input"
            )
        if self.kind == "learned":
            pos = torch.arange(offset, offset + L, device=x.device)
            return x + self.table(pos)[None]
        return x + self.sin_table[offset : offset + L].to(x.dtype)[None]


class RotaryEmbedding(nn.Module):
    """RoPE on the token axis of (B, H, L, d) tensors; positions are passed in so decoding can offset them."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim, self.theta = head_dim, float(theta)

    def rotation(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin of p * theta^(-2i/d), each (L, d/2), in `dtype`. The frequencies are recomputed here
        rather than kept in a buffer: `model.to(torch.bfloat16)` would round a buffer, and an 8-bit
        frequency turns position 500's angle into noise. MPS has no float64: there they are computed on the
        CPU."""
        where = torch.device("cpu") if positions.device.type == "mps" else positions.device
        i = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=where)
        angles = positions.to(where, torch.float64)[:, None] * self.theta ** (-i / self.head_dim)  # (L, d/2)
        return angles.cos().to(positions.device, dtype), angles.sin().to(positions.device, dtype)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (..., L, d); positions: (L,) absolute 0-based positions. Returns R_p x with x's dtype, rotated
        in float32 for half-precision x and in x's dtype otherwise."""
        xf = x.to(at_least_fp32(x.dtype))
        cos, sin = self.rotation(positions, xf.dtype)
        x_even, x_odd = xf[..., 0::2], xf[..., 1::2]  # (..., L, d/2): the interleaved pairs
        out_even = x_even * cos - x_odd * sin
        out_odd = x_even * sin + x_odd * cos
        return torch.stack((out_even, out_odd), dim=-1).flatten(-2).to(x.dtype)  # re-interleave
