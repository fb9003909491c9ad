"""Attention kinds: a common base (base.py), one module per family, and the registry (registry.py) mapping
each `model.attention` name to its class. Each class declares its kind and options model; the names and
options are also listed torch-free in lm.attention_kinds, for the config."""

from lm.attention_kinds import resolve_attention_options
from lm.model.attention.base import Attention, AttentionResult, ExactState, LinearState, Pass, State
from lm.model.attention.registry import attention_class, build_attention

__all__ = [
    "Attention",
    "AttentionResult",
    "ExactState",
    "LinearState",
    "Pass",
    "State",
    "attention_class",
    "build_attention",
    "resolve_attention_options",
]
