"""Softmax dot-product attention (Vaswani et al. 2017) and its rotary variant (Su et al. 2021, RoFormer).

S_ij = q_i . k_j / sqrt(d), w = softmax_j(S), out = w v. `rotary` is the same with RoPE forced on.

Both are `fused` (lm.model.attention.base): unless the attention weights are asked for, the core is
F.scaled_dot_product_attention, which never holds the L x L matrix (flash / memory-efficient kernels; on
CUDA in the autocast dtype). The explicit path below (q pre-scaled, masked in place by a broadcast add, one
softmax) gives the weights for `lm viz` and is the reference tests/test_attention.py checks the fused path
against. benchmarks/attention.py measures the two side by side.
"""

from __future__ import annotations

from torch import Tensor

from lm.attention_kinds import AttentionOptions, RotaryOptions
from lm.model.attention.base import ExactAttention


class StandardAttention(ExactAttention):
    kind = "standard"
    Options = AttentionOptions
    fused = True  # scores are q.k / sqrt(d): the core is F.scaled_dot_product_attention

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Lq, Lk); scaling q costs L*d, not L*L


class RotaryAttention(StandardAttention):
    """`standard` with RoPE always on (its options reject use_rope: false)."""

    kind = "rotary"
    Options = RotaryOptions
