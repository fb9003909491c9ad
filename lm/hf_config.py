"""Hugging Face config.json -> lm's model keys, without torch: what `lm.config` reads to take a checkpoint's
architecture (train.init_from) and what lm.model.hf builds its ModelConfig from. The mapping of each
architecture is described in lm/model/hf.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lm.errors import LmError

_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate"}


def _get(cfg: dict[str, Any], key: str, source: Path, default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        raise LmError(f"{source}: key {key!r} missing from the Hugging Face config")
    return default


def _pad_id(cfg: dict[str, Any], vocab: int) -> int:
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = cfg.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < vocab:
            return value
    return 0


def _rope_theta(cfg: dict[str, Any], source: Path) -> float:
    """rope_theta from `rope_parameters` (transformers >= 5) or the top level (4.x); only plain RoPE."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise LmError(f"{source}: rope type {rope_type!r} is not supported (lm implements plain RoPE only)")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return float(theta)


def _gpt2_model(
    cfg: dict[str, Any], source: Path, allow_approximate_gelu: bool = False
) -> tuple[dict[str, Any], int]:
    """GPT-2's config as lm model keys and its context length."""
    act = _get(cfg, "activation_function", source, "gelu_new")
    if act in _TANH_GELUS and not allow_approximate_gelu:
        raise LmError(
            f"{source}: activation_function {act!r} is the tanh GELU; lm's GELU is exact (erf). Pass "
            "allow_approximate_gelu=True to load it anyway (outputs then differ slightly from Hugging Face)"
        )
    if act != "gelu" and act not in _TANH_GELUS:
        raise LmError(f"{source}: activation_function {act!r} is not supported (lm's GPT-2 MLP uses GELU)")
    if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False):
        raise LmError(f"{source}: only GPT-2's default 1/sqrt(head_dim) attention scaling is supported")
    if cfg.get("add_cross_attention", False):
        raise LmError(f"{source}: cross-attention GPT-2 checkpoints are not supported")
    d = _get(cfg, "n_embd", source)
    n_heads = _get(cfg, "n_head", source)
    model = dict(
        d_model=d,
        n_layers=_get(cfg, "n_layer", source),
        n_heads=n_heads,
        d_ff=_get(cfg, "n_inner", source, 4 * d),
        dropout=float(_get(cfg, "resid_pdrop", source, 0.1)),
        attention_dropout=float(_get(cfg, "attn_pdrop", source, 0.1)),
        attention="standard",
        positions="learned",
        norm="layernorm",
        norm_position="pre",
        mlp="gelu",
        bias=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        norm_eps=float(_get(cfg, "layer_norm_epsilon", source, 1e-5)),
    )
    return model, _get(cfg, "n_positions", source)


def _llama_model(cfg: dict[str, Any], source: Path) -> tuple[dict[str, Any], int]:
    """Llama's config as lm model keys and its context length."""
    act = _get(cfg, "hidden_act", source, "silu")
    if act != "silu":
        raise LmError(f"{source}: hidden_act {act!r} is not supported (lm's SwiGLU uses silu)")
    d = _get(cfg, "hidden_size", source)
    n_heads = _get(cfg, "num_attention_heads", source)
    head_dim = cfg.get("head_dim") or d // n_heads
    if head_dim * n_heads != d:
        raise LmError(
            f"{source}: head_dim {head_dim} x {n_heads} heads != hidden_size {d}; lm needs them equal"
        )
    n_kv = _get(cfg, "num_key_value_heads", source, n_heads)
    if n_heads % n_kv:
        raise LmError(f"{source}: num_key_value_heads {n_kv} must divide num_attention_heads {n_heads}")
    model = dict(
        d_model=d,
        n_layers=_get(cfg, "num_hidden_layers", source),
        n_heads=n_heads,
        d_ff=_get(cfg, "intermediate_size", source),
        dropout=0.0,
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        attention="rotary",
        attention_options={"rope_theta": _rope_theta(cfg, source)},
        positions="none",
        norm="rmsnorm",
        norm_position="pre",
        mlp="swiglu",
        bias=bool(cfg.get("attention_bias", False) or cfg.get("mlp_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm_eps=float(_get(cfg, "rms_norm_eps", source, 1e-6)),
    )
    return model, _get(cfg, "max_position_embeddings", source)


def hf_model_keys(
    cfg: dict[str, Any], *, source: Path = Path("config.json"), allow_approximate_gelu: bool = False
) -> dict[str, Any]:
    """Map a Hugging Face config.json (as a dict) to lm's model keys (the `model` entry, a dict for
    ModelConfig) and sizes; reject what lm cannot reproduce."""
    arch = cfg.get("model_type")
    if arch == "gpt2":
        model, max_len = _gpt2_model(cfg, source, allow_approximate_gelu)
    elif arch == "llama":
        model, max_len = _llama_model(cfg, source)
    elif arch in ENCODERS:
        model, max_len = _encoder_model(cfg, arch, source)
    else:
        raise LmError(
            f"{source}: model_type {arch!r} is not supported (lm converts gpt2, llama, bert, roberta and "
            "distilbert checkpoints)"
        )
    vocab = _get(cfg, "vocab_size", source)
    return {
        "arch": arch,
        "model": model,
        "vocab_size": vocab,
        "max_len": max_len,
        "pad_id": _pad_id(cfg, vocab),
        "n_kv_heads": _get(cfg, "num_key_value_heads", source, model["n_heads"])
        if arch == "llama"
        else model["n_heads"],
    }


ENCODERS = ("bert", "roberta", "distilbert")


def _encoder_model(cfg: dict[str, Any], arch: str, source: Path) -> tuple[dict[str, Any], int]:
    """BERT-family encoders: learned positions, post-norm LayerNorm blocks, exact GELU, biases, a LayerNorm
    right after the embeddings. RoBERTa numbers positions from padding_idx + 1, so two rows fewer are
    usable."""
    if arch == "distilbert":
        act, d = _get(cfg, "activation", source, "gelu"), _get(cfg, "dim", source)
        if cfg.get("sinusoidal_pos_embds"):
            raise LmError(f"{source}: DistilBERT with sinusoidal_pos_embds is not supported")
        model = dict(
            d_model=d,
            n_layers=_get(cfg, "n_layers", source),
            n_heads=_get(cfg, "n_heads", source),
            d_ff=_get(cfg, "hidden_dim", source),
            dropout=float(cfg.get("dropout", 0.1)),
            attention_dropout=float(cfg.get("attention_dropout", 0.1)),
            norm_eps=1e-12,
        )
        max_len = _get(cfg, "max_position_embeddings", source)
    else:
        act, d = _get(cfg, "hidden_act", source, "gelu"), _get(cfg, "hidden_size", source)
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise LmError(
                f"{source}: position_embedding_type {cfg['position_embedding_type']!r} is not supported"
            )
        model = dict(
            d_model=d,
            n_layers=_get(cfg, "num_hidden_layers", source),
            n_heads=_get(cfg, "num_attention_heads", source),
            d_ff=_get(cfg, "intermediate_size", source),
            dropout=float(cfg.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(cfg.get("attention_probs_dropout_prob", 0.1)),
            norm_eps=float(_get(cfg, "layer_norm_eps", source, 1e-12)),
        )
        max_len = _get(cfg, "max_position_embeddings", source) - (
            _roberta_offset(cfg) if arch == "roberta" else 0
        )
    if act != "gelu":
        raise LmError(f"{source}: activation {act!r} is not supported (lm's encoder MLP uses the exact GELU)")
    model.update(
        attention="standard",
        positions="learned",
        norm="layernorm",
        norm_position="post",
        mlp="gelu",
        bias=True,
        tie_embeddings=True,
        embed_norm=True,
        token_type=arch != "distilbert",
    )
    return model, max_len


def _roberta_offset(cfg: dict[str, Any]) -> int:
    """RoBERTa's position ids start at padding_idx + 1: rows before that are never used."""
    return int(cfg.get("pad_token_id", 1)) + 1
