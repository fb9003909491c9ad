"""The attention-kind registry and per-kind option validation.

Each kind is a class decorated with `@register("name")` that declares its options (name -> Option with a
default and a check). `validate_attention_options` is what the config layer calls, so a misspelt or
out-of-range `model.attention_options.<key>` fails at load time with the key named.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lm.errors import LmError

if TYPE_CHECKING:
    import torch

    from lm.config import ModelConfig
    from lm.model.attention.base import Attention

_KIND_MODULES = ("standard", "linear", "performer", "cosformer", "rff", "yat", "slay")
_REGISTRY: dict[str, type[Attention]] = {}


@dataclass(frozen=True)
class Option:
    """One attention option: its default and a check returning an error text (or None when valid)."""

    default: Any
    check: Callable[[Any], str | None]
    help: str = ""


def boolean() -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, bool) else "must be true or false"


def integer(minimum: int = 1) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer"
        return None if v >= minimum else f"must be >= {minimum}"

    return check


def number(minimum: float = 0.0, *, strict: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "must be a number"
        ok = v > minimum if strict else v >= minimum
        return None if ok else f"must be {'>' if strict else '>='} {minimum}"

    return check


def choice(*values: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in values else f"must be one of {', '.join(values)}"


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else check(v)


def register(name: str) -> Callable[[type[Attention]], type[Attention]]:
    """Class decorator: make an attention kind available as `model.attention: <name>`."""

    def deco(cls: type[Attention]) -> type[Attention]:
        cls.kind = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load() -> None:
    for mod in _KIND_MODULES:
        importlib.import_module(f"lm.model.attention.{mod}")


def attention_kinds() -> tuple[str, ...]:
    """Registered kinds, in the order of lm.config.ATTENTION_KINDS."""
    from lm.config import ATTENTION_KINDS

    _load()
    return tuple(sorted(_REGISTRY, key=lambda k: ATTENTION_KINDS.index(k) if k in ATTENTION_KINDS else len(ATTENTION_KINDS)))


def attention_class(kind: str) -> type[Attention]:
    _load()
    if kind not in _REGISTRY:
        raise LmError(f"model.attention: unknown kind {kind!r} (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[kind]


def resolve_attention_options(kind: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `options` for `kind` and return them with every default filled in."""
    spec = attention_class(kind).option_spec()
    options = dict(options or {})
    for key, value in options.items():
        if key not in spec:
            raise LmError(
                f"model.attention_options.{key}: unknown option for attention {kind!r} "
                f"(allowed: {', '.join(sorted(spec))})"
            )
        problem = spec[key].check(value)
        if problem:
            raise LmError(f"model.attention_options.{key}: {problem} for attention {kind!r} (got {value!r})")
    resolved = {key: opt.default for key, opt in spec.items()}
    resolved.update(options)
    attention_class(kind).check_combination(resolved)
    return resolved


def validate_attention_options(kind: str, options: dict[str, Any]) -> None:
    """Raise LmError naming `model.attention_options.<key>` if `options` are not valid for `kind`."""
    resolve_attention_options(kind, options)


def build_attention(
    cfg: ModelConfig, *, max_len: int, generator: torch.Generator
) -> Attention:
    """One attention layer of kind `cfg.attention`; random buffers are drawn from `generator`."""
    cls = attention_class(cfg.attention)
    return cls(
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        bias=cfg.bias,
        attention_dropout=cfg.attention_dropout,
        max_len=max_len,
        options=resolve_attention_options(cfg.attention, cfg.attention_options),
        generator=generator,
    )
