"""The attention registry: from a `model.attention` name to its class, and `build_attention`.

The kinds and their typed options are declared once, in lm.attention_kinds (torch-free, so the config layer
validates options without importing this package); here each kind's class is imported when first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lm.attention_kinds import (
    AttentionOptions,
    kind_spec,
    resolve_attention_options,
)

if TYPE_CHECKING:
    import torch

    from lm.config import ModelConfig
    from lm.model.attention.base import Attention


def attention_class(kind: str) -> type[Attention]:
    """The class implementing `kind`; LmError naming model.attention for an unknown one."""
    module, _, name = kind_spec(kind).implementation.rpartition(".")
    return getattr(importlib.import_module(f"lm.model.attention.{module}"), name)


def build_attention(
    cfg: ModelConfig, *, max_len: int, generator: torch.Generator, options: AttentionOptions | None = None
) -> Attention:
    """One attention layer of kind `cfg.attention`; random buffers are drawn from `generator`. `options`: the
    layer's options already resolved from `cfg.attention_options` (a model resolves them once for all its
    layers); None resolves them here."""
    if options is None:
        options = resolve_attention_options(cfg.attention, cfg.attention_options)
    return attention_class(cfg.attention)(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        bias=cfg.bias,
        attention_dropout=cfg.attention_dropout,
        max_len=max_len,
        options=options,
        generator=generator,
    )
