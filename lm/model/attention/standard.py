"""Softmax dot-product attention (Vaswani et al. 2017) and its rotary variant (Su et al. 2021, RoFormer).

S_ij = q_i . k_j / sqrt(d), w = softmax_j(S), out = w v. `rotary` is the same with RoPE forced on.

No fused kernel: lm never calls F.scaled_dot_product_attention. The explicit path (q pre-scaled, masked in
place by a broadcast add, one softmax) costs the same as Hugging Face's GPT-2/BERT attention on CPU with
their SDPA or eager attention (with attention dropout SDPA falls back to the same math on CPU; lm's lead in
benchmarks/train_step.py comes from the chunked LM-head loss and the CLS-only last block, not from here),
gives the attention weights for free, and is the one path tests/test_attention.py checks against SDPA, so
a second path would add code without a measured gain.
"""

from __future__ import annotations

from torch import Tensor

from lm.model.attention.base import ExactAttention


class StandardAttention(ExactAttention):
    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (B, H, Lq, Lk); scaling q costs L*d, not L*L


class RotaryAttention(StandardAttention):
    """`standard` with RoPE always on (its options reject use_rope: false)."""
