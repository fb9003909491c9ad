"""Load a Hugging Face GPT-2 or Llama checkpoint directory into lm's CausalLM, and convert the trunk of a
BERT / RoBERTa / DistilBERT encoder for `train.init_from` (lm/model/init_from.py).

    model, cfg = load_hf_checkpoint("path/to/dir")   # config.json + model.safetensors / pytorch_model.bin

The directory is what `save_pretrained` writes (sharded `*.index.json` checkpoints too); `transformers`
itself is not needed. The architectures map onto ModelConfig as follows:

* GPT-2 (`model_type: gpt2`): attention standard, positions learned, LayerNorm (eps = layer_norm_epsilon),
  pre-norm, GELU MLP of width n_inner (default 4 d), bias on, tied head as configured.
* Llama (`model_type: llama`): attention rotary (rope_theta from the config), positions none, RMSNorm
  (eps = rms_norm_eps), pre-norm, SwiGLU with d_ff = intermediate_size, bias = attention_bias or mlp_bias
  (a missing half is loaded as zeros), tied head as configured.

Weight layout differences handled here:
* GPT-2 stores its linear layers as `Conv1D` with (in, out) weights: transposed.
* Llama has separate q/k/v projections: concatenated into lm's fused `qkv` (q, k, v order). Grouped-query
  checkpoints (num_key_value_heads < num_attention_heads) have their k/v heads repeated, which is exactly
  what HF's `repeat_kv` does at run time.
* RoPE pairs: HF rotates (i, i + d/2) ("rotate_half"), lm rotates the interleaved pairs (2i, 2i+1) (RoFormer /
  meta-llama). Permuting the q and k output rows of every head by new[2i + c] = old[c * d/2 + i] makes the
  two identical (q.k is unchanged by applying one permutation to both).
* SwiGLU: lm's fused `fc_in` is [gate_proj; up_proj].
* lm's GELU is the exact (erf) one. GPT-2 checkpoints normally use the tanh approximation ("gelu_new");
  they load only with `allow_approximate_gelu=True`, and then differ from Hugging Face by that
  approximation (up to ~1e-3 per activation). Checkpoints with `activation_function: gelu` match exactly.
* BERT-family encoders (`bert`, `roberta`, `distilbert`): positions learned, post-norm LayerNorm blocks,
  exact GELU, biases, `embed_norm` (the LayerNorm after the embeddings); the type-0 token-type embedding is
  `model.token_type`, a vector added to every token (single-segment inputs); RoBERTa's first padding_idx + 1
  position rows are dropped (its positions start after them, for unpadded inputs); a pretrained `pooler.dense`
  (BERT's classification pooler) loads into lm's classifier pooler.
Weights are loaded into a float32 model whatever their stored dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import Tensor

from lm.config import ModelConfig
from lm.errors import LmError, first_problem
from lm.hf_config import ENCODERS, hf_model_keys

_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # old non-parameter buffers


@dataclass(frozen=True)
class HfSpec:
    """What lm needs to rebuild a Hugging Face causal LM: the model config and the tokenizer-side sizes."""

    arch: str  # "gpt2" or "llama"
    model: ModelConfig
    vocab_size: int
    max_len: int
    pad_id: int
    n_kv_heads: int


def spec_from_hf_config(
    cfg: dict[str, Any], *, source: Path = Path("config.json"), allow_approximate_gelu: bool = False
) -> HfSpec:
    """Map a Hugging Face config.json (as a dict) to lm's ModelConfig; reject what lm cannot reproduce."""
    keys = hf_model_keys(cfg, source=source, allow_approximate_gelu=allow_approximate_gelu)
    model = keys["model"]
    try:
        model_cfg = ModelConfig(**model)
    except ValidationError as err:
        where, msg = first_problem(err)
        raise LmError(
            f"{source}: cannot be expressed as an lm model ({where + ': ' if where else ''}{msg})"
        ) from None
    return HfSpec(
        arch=keys["arch"],
        model=model_cfg,
        vocab_size=keys["vocab_size"],
        max_len=keys["max_len"],
        pad_id=keys["pad_id"],
        n_kv_heads=keys["n_kv_heads"],
    )


_ENCODER_PREFIXES = ("bert.", "roberta.", "distilbert.")
_ENCODER_HEADS = (
    "cls.",
    "lm_head.",
    "pooler.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
    "pre_classifier.",
    "classifier.",
    "qa_outputs.",
)  # task heads: init_from takes the trunk only


# ---- weights -----------------------------------------------------------------------------------------------


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a save_pretrained directory: safetensors (preferred) or pytorch_model.bin,
    single file or sharded through an `*.index.json`."""

    def load(file: Path) -> dict[str, Tensor]:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)

    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path / single).exists():
            return load(path / single)
        if (path / index).exists():
            shards = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
            weights: dict[str, Tensor] = {}
            for shard in shards:
                weights.update(load(path / shard))
            return weights
    raise LmError(
        f"{path}: no model.safetensors or pytorch_model.bin (write the checkpoint with save_pretrained)"
    )


def interleave_rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """Reorder the output rows of a q or k projection (weight (H*d, E) or bias (H*d,)) from HF's half-split
    RoPE pairs (i, i + d/2) to lm's interleaved pairs (2i, 2i+1): new[2i + c] = old[c * d/2 + i]."""
    rest = w.shape[1:]
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *rest).transpose(1, 2).reshape(n_heads * d, *rest)


def _repeat_kv(w: Tensor, n_kv: int, n_heads: int) -> Tensor:
    """(n_kv*d, ...) -> (n_heads*d, ...): query head h reads kv head h // (n_heads / n_kv), as HF
    repeat_kv."""
    rest = w.shape[1:]
    d = w.shape[0] // n_kv
    return w.reshape(n_kv, d, *rest).repeat_interleave(n_heads // n_kv, dim=0).reshape(n_heads * d, *rest)


def _strip(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {
        (k[len(prefix) :] if k.startswith(prefix) else k): v
        for k, v in weights.items()
        if not k.endswith(_IGNORED_SUFFIXES)
    }


def _gpt2_state(w: dict[str, Tensor], spec: HfSpec) -> dict[str, Tensor]:
    w = _strip(w, "transformer.")
    out = {
        "trunk.tok_emb.weight": w.pop("wte.weight"),
        "trunk.positions.table.weight": w.pop("wpe.weight"),
        "trunk.final_norm.weight": w.pop("ln_f.weight"),
        "trunk.final_norm.bias": w.pop("ln_f.bias"),
    }
    conv = {
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.proj",
        "mlp.c_fc": "mlp.fc_in",
        "mlp.c_proj": "mlp.fc_out",
    }
    for i in range(spec.model.n_layers):
        h, b = f"h.{i}.", f"trunk.blocks.{i}."
        for hf, lm in (("ln_1", "norm1"), ("ln_2", "norm2")):
            out[b + lm + ".weight"], out[b + lm + ".bias"] = (
                w.pop(h + hf + ".weight"),
                w.pop(h + hf + ".bias"),
            )
        for hf, lm in conv.items():  # Conv1D keeps (in, out) weights
            out[b + lm + ".weight"] = w.pop(h + hf + ".weight").T.contiguous()
            out[b + lm + ".bias"] = w.pop(h + hf + ".bias")
    lm_head = w.pop("lm_head.weight", None)
    if (
        not spec.model.tie_embeddings
    ):  # GPT2LMHeadModel's head has no bias; lm's untied head with bias=True has
        out["lm_head.weight"] = lm_head if lm_head is not None else out["trunk.tok_emb.weight"].clone()
        out["lm_head.bias"] = torch.zeros(spec.vocab_size)  # one, which stays zero
    _no_leftovers(w)
    return out


def _llama_state(w: dict[str, Tensor], spec: HfSpec) -> dict[str, Tensor]:
    w = _strip(w, "model.")
    cfg, H, n_kv = spec.model, spec.model.n_heads, spec.n_kv_heads
    E = cfg.d_model

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        """A weight, or zeros for a bias this checkpoint does not have (lm's bias switch is
        all-or-nothing)."""
        if key in w:
            return w.pop(key)
        if key.endswith(".bias"):
            return torch.zeros(shape)
        raise LmError(f"checkpoint: weight {key!r} is missing")

    out = {
        "trunk.tok_emb.weight": w.pop("embed_tokens.weight"),
        "trunk.final_norm.weight": w.pop("norm.weight"),
    }
    d = E // H
    for i in range(cfg.n_layers):
        h, b = f"layers.{i}.", f"trunk.blocks.{i}."
        out[b + "norm1.weight"] = w.pop(h + "input_layernorm.weight")
        out[b + "norm2.weight"] = w.pop(h + "post_attention_layernorm.weight")
        kinds = ("weight", "bias") if cfg.bias else ("weight",)
        for kind in kinds:
            cols = (E,) if kind == "weight" else ()
            q = interleave_rope_rows(take(h + f"self_attn.q_proj.{kind}", (H * d, *cols)), H)
            k = interleave_rope_rows(take(h + f"self_attn.k_proj.{kind}", (n_kv * d, *cols)), n_kv)
            v = take(h + f"self_attn.v_proj.{kind}", (n_kv * d, *cols))
            k, v = _repeat_kv(k, n_kv, H), _repeat_kv(v, n_kv, H)
            out[b + f"attn.qkv.{kind}"] = torch.cat([q, k, v], dim=0)
            out[b + f"attn.proj.{kind}"] = take(
                h + f"self_attn.o_proj.{kind}", (E, E) if kind == "weight" else (E,)
            )
            ff = cfg.d_ff
            gate = take(h + f"mlp.gate_proj.{kind}", (ff, E) if kind == "weight" else (ff,))
            up = take(h + f"mlp.up_proj.{kind}", (ff, E) if kind == "weight" else (ff,))
            out[b + f"mlp.fc_in.{kind}"] = torch.cat([gate, up], dim=0)
            out[b + f"mlp.fc_out.{kind}"] = take(
                h + f"mlp.down_proj.{kind}", (E, ff) if kind == "weight" else (E,)
            )
    lm_head = w.pop("lm_head.weight", None)
    if not cfg.tie_embeddings:
        if lm_head is None:
            raise LmError("checkpoint: lm_head.weight is missing for an untied Llama model")
        out["lm_head.weight"] = lm_head
        if cfg.bias:
            out["lm_head.bias"] = torch.zeros(spec.vocab_size)
    _no_leftovers(w)
    return out


def _encoder_state(w: dict[str, Tensor], spec: HfSpec) -> dict[str, Tensor]:
    """BERT / RoBERTa / DistilBERT trunk -> lm trunk.* names. The token-type embedding of type 0 (what every
    token gets when no segment ids are passed) becomes `trunk.type_emb` (model.token_type), added to every
    token as transformers adds it, so fine-tuning trains that one row as transformers does. The pretrained
    pooler (`pooler.dense`: dense + tanh on the CLS row, what BertForSequenceClassification classifies from)
    becomes lm's `pooler.*`; the other task heads are dropped."""
    prefix = next((p for p in _ENCODER_PREFIXES if any(k.startswith(p) for k in w)), "")
    w = _strip(w, prefix)
    pooler = {
        f"pooler.{kind}": w.pop(f"pooler.dense.{kind}")
        for kind in ("weight", "bias")
        if f"pooler.dense.{kind}" in w
    }
    w = {k: v for k, v in w.items() if not k.startswith(_ENCODER_HEADS)}
    w = {k.removeprefix("embeddings."): v for k, v in w.items()}
    w.pop("position_ids", None)  # a buffer older versions saved
    positions = w.pop("position_embeddings.weight")
    positions = positions[
        positions.shape[0] - spec.max_len :
    ]  # RoBERTa: drop the rows before padding_idx + 1
    out = {
        "trunk.tok_emb.weight": w.pop("word_embeddings.weight"),
        "trunk.positions.table.weight": positions,
        "trunk.embed_norm.weight": w.pop("LayerNorm.weight"),
        "trunk.embed_norm.bias": w.pop("LayerNorm.bias"),
    }
    token_type = w.pop("token_type_embeddings.weight", None)
    if spec.model.token_type:  # segment 0, its own weight (trained as transformers trains it)
        out["trunk.type_emb.weight"] = (
            token_type[:1] if token_type is not None else torch.zeros(1, spec.model.d_model)
        )
    distil = spec.arch == "distilbert"
    names = (
        {
            "q": "attention.q_lin",
            "k": "attention.k_lin",
            "v": "attention.v_lin",
            "proj": "attention.out_lin",
            "norm1": "sa_layer_norm",
            "fc_in": "ffn.lin1",
            "fc_out": "ffn.lin2",
            "norm2": "output_layer_norm",
        }
        if distil
        else {
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "fc_in": "intermediate.dense",
            "fc_out": "output.dense",
            "norm2": "output.LayerNorm",
        }
    )
    layer = "transformer.layer" if distil else "encoder.layer"
    for i in range(spec.model.n_layers):
        h, b = f"{layer}.{i}.", f"trunk.blocks.{i}."
        for kind in ("weight", "bias"):
            out[b + f"attn.qkv.{kind}"] = torch.cat([w.pop(h + names[x] + f".{kind}") for x in "qkv"], dim=0)
            for lm_name, target in (
                ("attn.proj", "proj"),
                ("norm1", "norm1"),
                ("mlp.fc_in", "fc_in"),
                ("mlp.fc_out", "fc_out"),
                ("norm2", "norm2"),
            ):
                out[b + f"{lm_name}.{kind}"] = w.pop(h + names[target] + f".{kind}")
    _no_leftovers(w)
    return {**out, **pooler}


def _no_leftovers(w: dict[str, Tensor]) -> None:
    if w:
        keys = ", ".join(sorted(w)[:4])
        raise LmError(
            f"checkpoint: weights lm cannot place ({keys}{', ...' if len(w) > 4 else ''}); "
            "unsupported variant"
        )


def convert_hf_state_dict(weights: dict[str, Tensor], spec: HfSpec) -> dict[str, Tensor]:
    """Hugging Face state dict -> lm state dict: the whole CausalLM for GPT-2 / Llama, the trunk (trunk.*) and
    the pretrained pooler (pooler.*, when the checkpoint has one) for the BERT-family encoders."""
    converter = {"gpt2": _gpt2_state, "llama": _llama_state}.get(spec.arch, _encoder_state)
    try:
        return converter(dict(weights), spec)
    except KeyError as err:
        raise LmError(f"checkpoint: weight {err.args[0]!r} is missing for a {spec.arch} model") from None


def load_hf_checkpoint(
    path: str | Path, *, allow_approximate_gelu: bool = False
) -> tuple[torch.nn.Module, ModelConfig]:
    """Build lm's CausalLM from a Hugging Face GPT-2 / Llama `save_pretrained` directory; returns the model
    (float32, eval mode) and its ModelConfig. Vocabulary size, max_len and pad id are on the model
    (`model.vocab_size`, `model.max_len`, `model.pad_id`)."""
    from lm.model.tasks import build_model

    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise LmError(f"{path}: no config.json (expected a directory written by save_pretrained)")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise LmError(f"{config_file}: not valid JSON ({err.msg})") from None
    spec = spec_from_hf_config(raw, source=config_file, allow_approximate_gelu=allow_approximate_gelu)
    if spec.arch in ENCODERS:
        raise LmError(f"{path}: a {spec.arch} encoder is not a causal LM; fine-tune it with train.init_from")
    state = convert_hf_state_dict(read_hf_weights(path), spec)
    model = build_model(
        spec.model, task="clm", vocab_size=spec.vocab_size, max_len=spec.max_len, pad_id=spec.pad_id
    )
    if spec.model.tie_embeddings:
        state["lm_head.weight"] = state["trunk.tok_emb.weight"]  # the same Parameter in lm
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LmError(f"{path}: checkpoint lacks {', '.join(missing[:4])}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise LmError(
                f"{path}: {key} has shape {tuple(value.shape)}, lm expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), spec.model
