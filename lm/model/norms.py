"""Normalisation layers written out: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm.model.precision import at_least_fp32


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight (+ bias) over the last dim, biased variance (as torch/BERT),
    computed in float32 for half-precision inputs and in the input's dtype otherwise (float64 stays
    float64); weight and bias are cast along. `bias=False` drops the additive term (ModelConfig.bias off).

    The arithmetic runs in torch's fused layer_norm kernel (one pass forward, one backward) rather than as
    the six elementwise ops of the formula: written out, LayerNorm was ~10% of a training step and the
    main reason lm trailed Hugging Face in benchmarks/train_step.py. tests/test_model.py checks it against
    the formula computed by hand."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = at_least_fp32(x.dtype)
        bias = self.bias.to(dtype) if self.bias is not None else None
        return F.layer_norm(x.to(dtype), self.weight.shape, self.weight.to(dtype), bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no centring and no bias, cheaper than LayerNorm (Llama).
    Computed in float32 for half-precision inputs, in the input's dtype otherwise (as LayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(at_least_fp32(x.dtype))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(xf.dtype)).to(x.dtype)


def make_norm(kind: str, dim: int, *, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """LayerNorm (with a bias when `bias`) or RMSNorm (never a bias), both with epsilon `eps`."""
    if kind == "layernorm":
        return LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")
