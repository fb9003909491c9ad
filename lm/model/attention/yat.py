"""Yat attention and its spherical form (mlnomadpy/slay, MiniBERT script; SLAY paper).

* yat: S_ij = (q.k)^2 / (max(|q|^2 + |k|^2 - 2 q.k, 0) + eps) * score_scale, softmax over j (no 1/sqrt d).
* yat-spherical: q^, k^ unit-normalised, x = q^.k^, C = 2 + eps,
  S_ij = x^2 / max(C - 2x, 1e-4) * score_scale in [0, 1/eps]; normalised by softmax (MiniBERT, default) or
  by the kernel, S / (sum_j S + 1e-6) (PyTorch repo and the paper; what SLAY approximates).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lm.attention_kinds import YatOptions, YatSphericalOptions
from lm.model.attention.base import ExactAttention


class _RationalScores(torch.autograd.Function):
    """S_ij = scale * x_ij^2 / D_ij with D_ij = max(a_i + b_j - 2 x_ij, lo) + add, both Yat kinds' score.

    Written out by hand because autograd would keep five (Lq, Lk) tensors of the chain (x, the clamp
    input, x^2, D, the quotient) where two suffice (x and D; the clamp is active exactly where D = lo + add),
    and would build them with one pass per elementary op. At L = 8192 that is the difference between
    9 GB and 5 GB per layer and head group. a, b: (..., Lq) and (..., Lk), or None for 0. Where the clamp
    bites exactly at its bound (q == k up to rounding) the clamp's gradient counts as off, where torch's
    clamp would pass it; the two differ only there."""

    @staticmethod
    def forward(
        ctx, x: Tensor, a: Tensor | None, b: Tensor | None, lo: float, add: float, scale: float
    ) -> Tensor:
        D = x * -2.0
        if a is not None:
            D += a[..., :, None]
        if b is not None:
            D += b[..., None, :]
        D.clamp_(min=lo)
        if add:
            D += add
        S = x.square()
        S /= D
        if scale != 1.0:
            S *= scale
        ctx.save_for_backward(x, D)
        ctx.consts = (lo + add, scale, a is not None, b is not None)
        return S

    @staticmethod
    @once_differentiable
    def backward(ctx, G: Tensor):
        x, D = ctx.saved_tensors
        floor, scale, has_a, has_b = ctx.consts
        A = (
            G * x
        )  # dS/dx = scale * (2x / D + 2x^2 / D^2 [unclamped]); dS/da = dS/db = -scale x^2/D^2 [unclamped]
        A /= D
        if scale != 1.0:
            A *= scale  # A = G scale x / D
        Bm = A * x
        Bm /= D
        Bm.masked_fill_(floor >= D, 0.0)  # B = G scale x^2 / D^2 where the clamp is inactive
        grad_a = -Bm.sum(-1) if has_a and ctx.needs_input_grad[1] else None
        grad_b = -Bm.sum(-2) if has_b and ctx.needs_input_grad[2] else None
        A += Bm
        A *= 2.0
        return A, grad_a, grad_b, None, None, None


def unit(u: Tensor) -> Tensor:
    """u / max(|u|, 1e-6) over the last dim (MiniBERT's safe_normalize)."""
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-6)


class YatAttention(ExactAttention):
    kind = "yat"
    Options = YatOptions

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        dot = q @ k.transpose(-1, -2)  # (B, H, Lq, Lk); distance^2 = |q|^2 + |k|^2 - 2 q.k, clamped at 0
        return _RationalScores.apply(
            dot, q.pow(2).sum(-1), k.pow(2).sum(-1), 0.0, self.opts.epsilon, self.opts.score_scale
        )


class YatSphericalAttention(ExactAttention):
    kind = "yat-spherical"
    Options = YatSphericalOptions

    @property
    def normalization(self) -> str:  # type: ignore[override]
        return self.opts.normalization

    def kernel_eps(self) -> float:
        return self.opts.eps

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        x = unit(q) @ unit(k).transpose(-1, -2)  # (B, H, Lq, Lk) cosines; D = max(C - 2x, 1e-4)
        C = 2.0 + self.opts.epsilon
        return _RationalScores.apply(x, x.new_full(x.shape[-2:-1], C), None, 1e-4, 0.0, self.opts.score_scale)
