"""The attention registry: from a `model.attention` name to its class, and `build_attention`.

Each class says what it is (`kind`, `Options`); the registry lists the classes and reads those declarations,
so a kind's identity never depends on where its class lives. lm.attention_kinds names the same kinds and
options torch-free for the config; tests/test_attention.py checks that the two agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lm.attention_kinds import AttentionOptions, options_model
from lm.model.attention.base import Attention
from lm.model.attention.cosformer import CosformerAttention
from lm.model.attention.linear import EluLinearAttention
from lm.model.attention.performer import PerformerAttention
from lm.model.attention.rff import RffAttention
from lm.model.attention.slay import (
    SlayAnchorAttention,
    SlayHadamardAttention,
    SlayLaplaceAttention,
    SlayNystromAttention,
    SlayRandomMaclaurinAttention,
    SlayTensorAttention,
)
from lm.model.attention.standard import RotaryAttention, StandardAttention
from lm.model.attention.yat import YatAttention, YatSphericalAttention

if TYPE_CHECKING:
    import torch

    from lm.config import ModelConfig

CLASSES: tuple[type[Attention], ...] = (
    StandardAttention,
    RotaryAttention,
    EluLinearAttention,
    PerformerAttention,
    CosformerAttention,
    RffAttention,
    YatAttention,
    YatSphericalAttention,
    SlayHadamardAttention,
    SlayTensorAttention,
    SlayLaplaceAttention,
    SlayRandomMaclaurinAttention,
    SlayNystromAttention,
    SlayAnchorAttention,
)
REGISTRY: dict[str, type[Attention]] = {cls.kind: cls for cls in CLASSES}


def attention_class(kind: str) -> type[Attention]:
    """The class implementing `kind`; LmError naming model.attention for an unknown one."""
    options_model(kind)  # the config's list of kinds: an unknown name fails there, with the choices
    return REGISTRY[kind]


def build_attention(
    cfg: ModelConfig, *, max_len: int, generator: torch.Generator, options: AttentionOptions
) -> Attention:
    """One attention layer of kind `cfg.attention` with `options` (resolved from `cfg.attention_options` once
    by the model build, for all its layers); random buffers are drawn from `generator`."""
    return attention_class(cfg.attention)(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        bias=cfg.bias,
        attention_dropout=cfg.attention_dropout,
        max_len=max_len,
        options=options,
        generator=generator,
    )
