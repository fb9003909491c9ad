"""Random Fourier features (Rahimi & Recht 2007) as a linear-attention kernel.

phi(u) = sqrt(2/m) cos(u W_h + b_h), W_h entries N(0, 1) (unit bandwidth), b_h ~ U[0, 2 pi), m = 64, so
E <phi(q), phi(k)> = exp(-|q - k|^2 / 2). Features are signed: the denominator can be ~0 or negative
(source behaviour, kept). `input_scale` (default 1, off) multiplies q and k before the map.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lm.attention_kinds import RffOptions
from lm.model.attention.base import LinearAttention


class RffAttention(LinearAttention):
    kind = "rff"
    Options = RffOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        H, d, m = self.n_heads, self.head_dim, self.opts.num_features
        self.register_buffer("omega", torch.randn(H, d, m, generator=generator))  # (H, d, m)
        self.register_buffer("phase", 2 * math.pi * torch.rand(H, m, generator=generator))  # (H, m)

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        omega, phase = self.omega.to(u.dtype), self.phase.to(u.dtype)  # buffers in the core's dtype
        m = omega.shape[-1]
        proj = (u * self.opts.input_scale) @ omega[None] + phase[None, :, None, :]  # (B, H, L, m)
        return math.sqrt(2.0 / m) * torch.cos(proj)
