"""Attention kinds: a common base (base.py), one module per family, and the registry (registry.py) mapping each
`model.attention` name to its class. The names and their typed options are declared in lm.attention_kinds."""

from lm.model.attention.base import Attention, AttentionResult, ExactState, LinearState
from lm.model.attention.registry import (
    attention_class,
    build_attention,
    resolve_attention_options,
)

__all__ = [
    "Attention",
    "AttentionResult",
    "ExactState",
    "LinearState",
    "attention_class",
    "build_attention",
    "resolve_attention_options",
]
