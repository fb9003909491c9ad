"""The dtype a layer computes its sensitive arithmetic in: norm statistics, softmax, rotary angles, the
attention cores and the loss.

A model computes in the dtype it is in. Half-precision inputs (float16, bfloat16) are upcast to float32
there, because their 8 or 11 mantissa bits and float16's range are too coarse for sums over a row, and
the result is cast back; float32 stays float32; float64 stays float64 end to end, which is what makes
float64 gradient checks and float64 reference comparisons possible.
"""

from __future__ import annotations

import torch


def at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 -> float32, float32 -> float32, float64 -> float64.

    >>> at_least_fp32(torch.bfloat16), at_least_fp32(torch.float64)
    (torch.float32, torch.float64)"""
    return torch.promote_types(dtype, torch.float32)
