"""The attention kinds' names and typed options, torch-free, and the one function that resolves options.

This module imports pydantic only, so validating params.yaml (lm.config) needs no torch and no model code.
Each kind's options are a pydantic model (strict: `"yes"` is not a boolean, `3.0` not an integer); a subclass
inherits its parent's options and may change their defaults. `KINDS` names every kind with its options model:
the config's `model.attention` choices. Each attention class declares the same pair itself (`kind`,
`Options`) and the registry in lm.model.attention reads it from there; tests/test_attention.py checks that
the two agree.

Options are resolved (nulls dropped, defaults filled, validated) only by `resolve_attention_options`: the
config calls it to validate params.yaml, the model build to hand every layer its typed options.

Adding a kind: write its class in lm/model/attention/<family>.py with `kind` and `Options`, list it in the
registry, add its options model here if it has options of its own, and one line to `KINDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lm.errors import LmError


class AttentionOptions(BaseModel):
    """Options every kind has (the exact softmax kinds have no others)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    use_rope: bool = Field(False, description="apply RoPE to q and k before the score / feature map")
    rope_theta: float = Field(10000.0, gt=1.0, description="RoPE base")


class RotaryOptions(AttentionOptions):
    use_rope: bool = Field(True, description="always true for rotary")

    @field_validator("use_rope")
    @classmethod
    def _always_rope(cls, value: bool) -> bool:
        if not value:
            raise ValueError("rotary attention always uses RoPE; use 'standard' instead")
        return value


class LinearOptions(AttentionOptions):
    """Options of every feature-map (linear) kind."""

    eps: float = Field(
        1e-4, gt=0.0, description="denominator stabiliser (added, or a lower clamp for slay kinds)"
    )
    chunk_size: int = Field(
        64, ge=1, description="causal prefix sums are computed in chunks of this many tokens"
    )


class PerformerOptions(LinearOptions):
    num_features: int = Field(64, ge=1, description="random features m per head")
    kernel: Literal["relu", "softmax"] = Field("relu", description="relu (source) or softmax (FAVOR+)")
    orthogonal: bool = Field(False, description="block-orthogonal random matrix")


class CosformerOptions(LinearOptions):
    max_len: int | None = Field(
        None, ge=1, description="M of the re-weighting; default L (bidirectional) / max_len (causal)"
    )


class RffOptions(LinearOptions):
    num_features: int = Field(64, ge=1, description="random features m per head")
    input_scale: float = Field(
        1.0, gt=0.0, description="q and k are multiplied by this before the feature map"
    )


class YatOptions(AttentionOptions):
    epsilon: float = Field(1e-4, gt=0.0, description="added to the squared distance (MiniBERT --yat_epsilon)")
    score_scale: float = Field(1.0, gt=0.0, description="multiplies the scores")


class YatSphericalOptions(AttentionOptions):
    epsilon: float = Field(1e-2, gt=0.0, description="C = 2 + epsilon; scores are bounded by 1/epsilon")
    score_scale: float = Field(1.0, gt=0.0, description="multiplies the scores")
    normalization: Literal["softmax", "kernel"] = Field(
        "softmax", description="softmax (MiniBERT) or kernel (paper)"
    )
    eps: float = Field(1e-6, gt=0.0, description="kernel normalisation: added to the row sum")


class SlayOptions(LinearOptions):
    """Options of the tensor-fusion SLAY kinds' base (M=8, R=1)."""

    num_features: int = Field(8, ge=1, description="PRF features M per quadrature node")
    num_quadrature_nodes: int = Field(1, ge=1, description="Gauss-Laguerre nodes R")
    epsilon: float = Field(1e-6, gt=0.0, description="C = 2 + epsilon in the target kernel")
    clip: float = Field(10.0, gt=0.0, description="PRF exponents are clipped to [-clip, clip]")


class SlayWideOptions(SlayOptions):
    """slay and slay-laplace: no polynomial map, so more features per node (M=32, R=2)."""

    num_features: int = Field(32, ge=1, description="features M per quadrature node")
    num_quadrature_nodes: int = Field(2, ge=1, description="Gauss-Laguerre nodes R")


class SlayPolyOptions(SlayOptions):
    poly_dim: int = Field(16, ge=1, description="polynomial features P")


class SlayNystromOptions(SlayPolyOptions):
    nystrom_reg: float = Field(1e-3, ge=0.0, description="lambda added to the anchor Gram matrix")


KINDS: dict[str, type[AttentionOptions]] = {
    "standard": AttentionOptions,
    "rotary": RotaryOptions,
    "linear": LinearOptions,
    "performer": PerformerOptions,
    "cosformer": CosformerOptions,
    "rff": RffOptions,
    "yat": YatOptions,
    "yat-spherical": YatSphericalOptions,
    "slay": SlayWideOptions,
    "slay-tensor": SlayPolyOptions,
    "slay-laplace": SlayWideOptions,
    "slay-rm": SlayPolyOptions,
    "slay-nystrom": SlayNystromOptions,
    "slay-anchor": SlayPolyOptions,
}

AttentionKind = Literal[tuple(KINDS)]  # type: ignore[valid-type]  # the names above, as pydantic's choice list


def options_model(kind: str) -> type[AttentionOptions]:
    """`KINDS[kind]`, or LmError naming model.attention for an unknown kind."""
    if kind not in KINDS:
        raise LmError(f"model.attention: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
    return KINDS[kind]


_PROBLEMS = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
}


def _problem(error: dict[str, Any], model: type[AttentionOptions]) -> str:
    """One pydantic error as the short phrase lm has always used ('must be >= 1')."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _PROBLEMS:
        return _PROBLEMS[kind]
    if kind in ("greater_than", "greater_than_equal"):
        op, bound = (">", ctx["gt"]) if kind == "greater_than" else (">=", ctx["ge"])
        return f"must be {op} {bound}"
    if kind == "literal_error":
        return f"must be one of {', '.join(get_args(model.model_fields[error['loc'][0]].annotation))}"
    return error["msg"]


def option_keys() -> list[str]:
    """Every option key of every kind, in declaration order: params.yaml lists each (null = the kind's
    default) so that `dvc exp run -S model.attention_options.<key>=...` edits an existing key."""
    keys: dict[str, None] = {}
    for options in KINDS.values():
        keys.update(dict.fromkeys(options.model_fields))
    return list(keys)


def kinds_with(key: str) -> list[str]:
    """The kinds that take option `key`."""
    return [name for name, options in KINDS.items() if key in options.model_fields]


def set_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options actually set: a null means the kind's default, so it is left out (params.yaml lists every
    key of every kind, null where unset). {"eps": None, "chunk_size": 8} -> {"chunk_size": 8}."""
    return {k: v for k, v in (options or {}).items() if v is not None}


def resolve_attention_options(kind: str, options: Mapping[str, Any] | None) -> AttentionOptions:
    """`options` (params.yaml's `model.attention_options`) validated for `kind`, every default filled in; a
    null value means the kind's default. Raises LmError naming `model.attention_options.<key>`."""
    model = options_model(kind)
    options = set_options(options)
    try:
        return model.model_validate(options)
    except ValidationError as err:
        order = list(options)  # report the first bad key in the order the user wrote them
        error = min(
            err.errors(),
            key=lambda e: order.index(e["loc"][0]) if e["loc"][:1] and e["loc"][0] in order else len(order),
        )
        key = error["loc"][0]
        if error["type"] == "extra_forbidden":
            takers = kinds_with(key)
            where = (
                f"only {', '.join(takers)} take it: set it to null for {kind!r}"
                if takers
                else f"allowed: {', '.join(sorted(model.model_fields))}"
            )
            raise LmError(
                f"model.attention_options.{key}: unknown option for attention {kind!r} ({where})"
            ) from None
        if error["type"] == "value_error":  # a rule of the kind, already phrased
            raise LmError(
                f"model.attention_options.{key}: {error['msg'].removeprefix('Value error, ')}"
            ) from None
        raise LmError(
            f"model.attention_options.{key}: {_problem(error, model)} for attention {kind!r} "
            f"(got {options[key]!r})"
        ) from None
