"""cosFormer (Qin et al. 2022; OpenNLPLab/cosFormer), 0-based positions as in the source script.

phi(u_p) = [ReLU(u_p) cos(a_p), ReLU(u_p) sin(a_p)], a_p = (pi/2) p / M, so
K(i, j) = (ReLU(q_i) . ReLU(k_j)) cos((pi/2)(i - j)/M) >= 0 for |i - j| <= M.
Bidirectional: M = L (the padded length, source behaviour) unless `max_len` is set. Causal: M = the model's
max_len (fixed), which makes outputs prefix-consistent and lets the KV cache reproduce training.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lm.attention_kinds import CosformerOptions
from lm.model.attention.base import LinearAttention


class CosformerAttention(LinearAttention):
    kind = "cosformer"
    Options = CosformerOptions

    def reweight_length(self, positions: Tensor, causal: bool) -> int:
        if self.opts.max_len is not None:
            return self.opts.max_len
        return self.max_len if causal else positions.numel()

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        M = self.reweight_length(positions, causal)
        angle = (math.pi / 2) * positions.to(u.dtype) / M  # (L,)
        r = torch.relu(u)  # (B, H, L, d)
        return torch.cat(
            [r * torch.cos(angle)[:, None], r * torch.sin(angle)[:, None]], dim=-1
        )  # (B, H, L, 2d)
