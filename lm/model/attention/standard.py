"""Softmax dot-product attention (Vaswani et al. 2017) and its rotary variant (Su et al. 2021, RoFormer).

S_ij = q_i . k_j / sqrt(d), w = softmax_j(S), out = w v. `rotary` is the same with RoPE forced on.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor

from lm.errors import LmError
from lm.model.attention.base import ExactAttention
from lm.model.attention.registry import Option, boolean, register


@register("standard")
class StandardAttention(ExactAttention):
    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)


@register("rotary")
class RotaryAttention(StandardAttention):
    options: ClassVar[dict[str, Option]] = {
        "use_rope": Option(True, boolean(), "always true for rotary"),
    }

    @classmethod
    def check_combination(cls, options: dict[str, Any]) -> None:
        if not options["use_rope"]:
            raise LmError("model.attention_options.use_rope: rotary attention always uses RoPE; use 'standard' instead")
