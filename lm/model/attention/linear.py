"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"; idiap/fast-transformers).

phi(u) = ELU(u) + 1 elementwise on raw q, k (no scaling), m = d; out_i = phi(q_i)^T S / (phi(q_i)^T z + eps).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lm.attention_kinds import LinearOptions
from lm.model.attention.base import LinearAttention


class EluLinearAttention(LinearAttention):
    kind = "linear"
    Options = LinearOptions

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        return F.elu(u) + 1.0  # (B, H, L, d), strictly positive
