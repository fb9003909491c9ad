"""Yat attention and its spherical form (mlnomadpy/slay, MiniBERT script; SLAY paper).

* yat: S_ij = (q.k)^2 / (max(|q|^2 + |k|^2 - 2 q.k, 0) + eps) * score_scale, softmax over j (no 1/sqrt d).
* yat-spherical: q^, k^ unit-normalised, x = q^.k^, C = 2 + eps,
  S_ij = x^2 / max(C - 2x, 1e-4) * score_scale in [0, 1/eps]; normalised by softmax (MiniBERT, default) or
  by the kernel, S / (sum_j S + 1e-6) (PyTorch repo and the paper; what SLAY approximates).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from lm.model.attention.base import ExactAttention
from lm.model.attention.registry import Option, choice, number, register


def unit(u: Tensor) -> Tensor:
    """u / max(|u|, 1e-6) over the last dim (MiniBERT's safe_normalize)."""
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-6)


@register("yat")
class YatAttention(ExactAttention):
    options: ClassVar[dict[str, Option]] = {
        "epsilon": Option(1e-4, number(0.0), "added to the squared distance (MiniBERT --yat_epsilon)"),
        "score_scale": Option(1.0, number(0.0), "multiplies the scores"),
    }

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        dot = q @ k.transpose(-1, -2)  # (B, H, Lq, Lk)
        dist = (q.pow(2).sum(-1)[..., :, None] + k.pow(2).sum(-1)[..., None, :] - 2 * dot).clamp_min(0.0)
        return dot.pow(2) / (dist + self.opts["epsilon"]) * self.opts["score_scale"]


@register("yat-spherical")
class YatSphericalAttention(ExactAttention):
    options: ClassVar[dict[str, Option]] = {
        "epsilon": Option(1e-2, number(0.0), "C = 2 + epsilon; scores are bounded by 1/epsilon"),
        "score_scale": Option(1.0, number(0.0), "multiplies the scores"),
        "normalization": Option("softmax", choice("softmax", "kernel"), "softmax (MiniBERT) or kernel (paper)"),
        "eps": Option(1e-6, number(0.0), "kernel normalisation: added to the row sum"),
    }

    @property
    def normalization(self) -> str:  # type: ignore[override]
        return self.opts["normalization"]

    def kernel_eps(self) -> float:
        return self.opts["eps"]

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        x = unit(q) @ unit(k).transpose(-1, -2)  # (B, H, Lq, Lk) cosines
        C = 2.0 + self.opts["epsilon"]
        return x.pow(2) / (C - 2 * x).clamp_min(1e-4) * self.opts["score_scale"]
