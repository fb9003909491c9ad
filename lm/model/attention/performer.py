"""Performer (Choromanski et al. 2021) as in the source MiniBERT script: random features over a fixed draw.

* kernel "relu" (default, the source): phi(u) = ReLU(u W_h), W_h in R^{d x m} with N(0, 1/d) entries. Its
  expected kernel is the degree-1 arc-cosine kernel (Cho & Saul 2009), not softmax.
* kernel "softmax": FAVOR+ positive features phi(u) = m^{-1/2} exp(w^T u~ - |u~|^2/2), u~ = d^{-1/4} u,
  w ~ N(0, I) (optionally block-orthogonal with chi-distributed norms); approximates softmax(q k^T / sqrt d).
  The exponent is clamped at 30 (only reached by pathological inputs) to keep fp32 finite.
W is drawn once from the model's generator, stored as a buffer, never redrawn; it is cast to the dtype of
q and k at use (the core's compute dtype: float32, or float64 in a float64 model).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lm.attention_kinds import PerformerOptions
from lm.model.attention.base import LinearAttention


def gaussian_projection(
    n_heads: int, dim: int, m: int, *, orthogonal: bool, generator: torch.Generator
) -> Tensor:
    """(H, d, m) matrix of N(0, 1) columns; `orthogonal` draws blocks of d orthogonal columns whose norms
    are resampled from the chi(d) distribution (Performer's ORF), so each column is still marginally
    N(0, I)."""
    if not orthogonal:
        return torch.randn(n_heads, dim, m, generator=generator)
    n_blocks = math.ceil(m / dim)
    g = torch.randn(n_heads * n_blocks, dim, dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)  # batched: (H * n_blocks, d, d)
    q = (
        q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    )  # Haar-distributed orthonormal columns
    cols = (
        q.view(n_heads, n_blocks, dim, dim).permute(0, 2, 1, 3).reshape(n_heads, dim, n_blocks * dim)[..., :m]
    )
    norms = torch.randn(n_heads, dim, m, generator=generator, dtype=torch.float64).norm(
        dim=1
    )  # (H, m) chi(d)
    return (cols * norms[:, None, :]).float()  # (H, d, m)


class PerformerAttention(LinearAttention):
    kind = "performer"
    Options = PerformerOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        H, d, m = self.n_heads, self.head_dim, self.opts.num_features
        w = gaussian_projection(H, d, m, orthogonal=self.opts.orthogonal, generator=generator)
        if self.opts.kernel == "relu":
            w = w / math.sqrt(d)  # entries N(0, 1/d)
        self.register_buffer("omega", w)  # (H, d, m)

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        omega = self.omega.to(u.dtype)[None]  # (1, H, d, m)
        if self.opts.kernel == "relu":
            return torch.relu(u @ omega)  # (B, H, L, m) >= 0
        d, m = u.shape[-1], omega.shape[-1]
        ut = u * d**-0.25
        expo = ut @ omega - 0.5 * ut.pow(2).sum(-1, keepdim=True)  # (B, H, L, m)
        return torch.exp(expo.clamp_max(30.0)) / math.sqrt(m)
