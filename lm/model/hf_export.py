"""Write an lm export (models/) as a Hugging Face `save_pretrained` directory that transformers loads without
lm:

    export_hf(Path("models"), Path("models-hf"))
    AutoModelForSequenceClassification.from_pretrained("models-hf")   # or AutoModelForCausalLM

The reverse of lm/model/hf.py, for the architectures transformers has a class for (docs/huggingface.md):
* classify, post-norm encoder with embed_norm, CLS pooling -> BertForSequenceClassification, one label,
  problem_type multi_label_classification (BCE with logits on the single logit, as lm trains it);
* clm, pre-norm, LayerNorm, GELU, no RoPE -> GPT2LMHeadModel;
* clm, pre-norm, RMSNorm, SwiGLU, RoPE, no absolute positions -> LlamaForCausalLM.
Anything else is refused with one line naming what has no counterpart. config.json and model.safetensors are
written directly (transformers is not needed here); the layouts are hf.py's, undone: Conv1D weights
transposed back, fused qkv split, q/k rows de-interleaved to HF's half-split RoPE, fc_in split to gate/up.
A bias that lm switched off (`model.bias: false`) and a sinusoidal or absent position table are written as
the zeros / fixed table they compute, so the outputs are the same to float32 rounding.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lm.attention_kinds import resolve_attention_options
from lm.config import ModelConfig
from lm.errors import LmError
from lm.io import atomic_dir, atomic_write_json
from lm.model.export import EXPORT_CONFIG, load_exported, read_export_config
from lm.model.positions import sinusoidal_table
from lm.special_tokens import EOT

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
HF_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class HfExport:
    """What export_hf wrote: the transformers class and the Auto class that loads it."""

    architecture: str  # e.g. "BertForSequenceClassification"
    auto_class: str  # e.g. "AutoModelForSequenceClassification"
    out_dir: Path


# ---- which architecture ------------------------------------------------------------------------------------

_AUTO = {
    "bert": ("BertForSequenceClassification", "AutoModelForSequenceClassification"),
    "gpt2": ("GPT2LMHeadModel", "AutoModelForCausalLM"),
    "llama": ("LlamaForCausalLM", "AutoModelForCausalLM"),
}

# per target: (ModelConfig field, the value it needs, why) -- the value of attention is checked apart (RoPE)
_NEEDS = {
    "bert": [
        (
            "norm_position",
            "post",
            "BERT normalises after each residual sum; a pre-norm encoder has no BERT counterpart",
        ),
        ("embed_norm", True, "BERT normalises the embeddings"),
        ("norm", "layernorm", "BERT uses LayerNorm"),
        ("mlp", "gelu", "BERT's MLP is GELU"),
        (
            "pooling",
            "cls",
            "BERT's pooler reads the first token; mean pooling has no transformers counterpart",
        ),
    ],
    "gpt2": [
        ("norm_position", "pre", "GPT-2 normalises before each sublayer"),
        ("embed_norm", False, "GPT-2 has no norm after the embeddings"),
        ("norm", "layernorm", "GPT-2 uses LayerNorm"),
        ("mlp", "gelu", "GPT-2's MLP is GELU"),
    ],
    "llama": [
        ("norm_position", "pre", "Llama normalises before each sublayer"),
        ("embed_norm", False, "Llama has no norm after the embeddings"),
        ("norm", "rmsnorm", "Llama uses RMSNorm"),
        ("mlp", "swiglu", "Llama's MLP is SwiGLU"),
        ("positions", "none", "Llama has no absolute position table (RoPE only)"),
    ],
}


def hf_architecture(cfg: ModelConfig, task: str, where: Path) -> str:
    """The transformers architecture ("bert", "gpt2" or "llama") that computes what this lm model computes, or
    an LmError naming every setting that does not map."""
    if task == "mlm":
        raise LmError(
            f"{where}: task mlm does not export to Hugging Face (its masked-LM heads put a dense + GELU + "
            "LayerNorm transform before the decoder, which lm's MaskedLM lacks); "
            "export a classify or clm model"
        )
    if task not in ("classify", "clm"):
        raise LmError(f"{where}: task {task!r} does not export to Hugging Face (classify and clm do)")
    opts = resolve_attention_options(cfg.attention, cfg.attention_options)
    if cfg.attention not in ("standard", "rotary"):
        raise LmError(
            f"{where}: model.attention={cfg.attention} does not map to Hugging Face (transformers has no "
            "such attention; only softmax attention, standard or rotary, exports)"
        )
    arch = "bert" if task == "classify" else ("llama" if opts.use_rope else "gpt2")
    problems = [
        f"model.{field}={getattr(cfg, field)!r} ({why})"
        for field, value, why in _NEEDS[arch]
        if getattr(cfg, field) != value
    ]
    if arch == "bert" and opts.use_rope:
        problems.insert(0, "RoPE (BERT has learned absolute positions only)")
    if problems:
        raise LmError(f"{where}: a {task} model with {'; '.join(problems)} does not map to {_AUTO[arch][0]}")
    return arch


# ---- weights -----------------------------------------------------------------------------------------------


def deinterleave_rope_rows(w: Tensor, n_heads: int) -> Tensor:
    """The inverse of hf.interleave_rope_rows: q/k output rows from lm's interleaved RoPE pairs (2i, 2i+1)
    back to HF's half-split pairs (i, i + d/2): new[c * d/2 + i] = old[2i + c]. E.g. one head, d=4: rows
    [a0, b0, a1, b1] -> [a0, a1, b0, b1]."""
    rest = w.shape[1:]
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, d // 2, 2, *rest).transpose(1, 2).reshape(n_heads * d, *rest)


def _bias(layer: nn.Module, size: int) -> Tensor:
    """The layer's bias, or the zeros it adds when lm built it without one (model.bias: false)."""
    bias = getattr(layer, "bias", None)
    return bias.detach() if bias is not None else torch.zeros(size)


def _linear(name: str, layer: nn.Linear, *, transpose: bool = False) -> dict[str, Tensor]:
    """`name.weight` and `name.bias`; GPT-2's Conv1D keeps (in, out) weights, hence `transpose`."""
    w = layer.weight.detach()
    return {f"{name}.weight": w.T if transpose else w, f"{name}.bias": _bias(layer, layer.out_features)}


def _norm(name: str, norm: nn.Module) -> dict[str, Tensor]:
    return {f"{name}.weight": norm.weight.detach(), f"{name}.bias": _bias(norm, norm.weight.shape[0])}


def _position_table(trunk: nn.Module) -> Tensor:
    """(max_len, E): the learned table, the sinusoidal one lm adds (same float32 rounding), or zeros
    (none)."""
    pos, E = trunk.positions, trunk.config.d_model
    if pos.kind == "learned":
        return pos.table.weight.detach()
    if pos.kind == "sinusoidal":
        return sinusoidal_table(pos.max_len, E).float()
    return torch.zeros(pos.max_len, E)


def _token_types(trunk: nn.Module, E: int) -> Tensor:
    """BERT's token-type table: lm's segment-0 vector (model.token_type) as row 0, else zeros; row 1 zeros."""
    table = torch.zeros(2, E)
    if trunk.type_emb is not None:
        table[0] = trunk.type_emb.weight.detach()[0]
    return table


def _bert_weights(model: nn.Module) -> dict[str, Tensor]:
    trunk, E = model.trunk, model.config.d_model
    out = {
        "bert.embeddings.word_embeddings.weight": trunk.tok_emb.weight.detach(),
        "bert.embeddings.position_embeddings.weight": _position_table(trunk),
        "bert.embeddings.token_type_embeddings.weight": _token_types(trunk, E),
        **_norm("bert.embeddings.LayerNorm", trunk.embed_norm),
    }
    for i, block in enumerate(trunk.blocks):
        h = f"bert.encoder.layer.{i}."
        qkv_w, qkv_b = block.attn.qkv.weight.detach(), _bias(block.attn.qkv, 3 * E)
        for name, w, b in zip(("query", "key", "value"), qkv_w.chunk(3), qkv_b.chunk(3)):
            out[f"{h}attention.self.{name}.weight"], out[f"{h}attention.self.{name}.bias"] = w, b
        out |= _linear(h + "attention.output.dense", block.attn.proj) | _norm(
            h + "attention.output.LayerNorm", block.norm1
        )
        out |= _linear(h + "intermediate.dense", block.mlp.fc_in) | _linear(
            h + "output.dense", block.mlp.fc_out
        )
        out |= _norm(h + "output.LayerNorm", block.norm2)
    return out | _linear("bert.pooler.dense", model.pooler) | _linear("classifier", model.classifier)


def _gpt2_weights(model: nn.Module) -> dict[str, Tensor]:
    trunk = model.trunk
    out = {
        "transformer.wte.weight": trunk.tok_emb.weight.detach(),
        "transformer.wpe.weight": _position_table(trunk),
        **_norm("transformer.ln_f", trunk.final_norm),
    }
    for i, block in enumerate(trunk.blocks):
        h = f"transformer.h.{i}."
        out |= _norm(h + "ln_1", block.norm1) | _norm(h + "ln_2", block.norm2)
        for hf_name, layer in (
            ("attn.c_attn", block.attn.qkv),
            ("attn.c_proj", block.attn.proj),
            ("mlp.c_fc", block.mlp.fc_in),
            ("mlp.c_proj", block.mlp.fc_out),
        ):
            out |= _linear(h + hf_name, layer, transpose=True)
    return out


def _llama_weights(model: nn.Module) -> dict[str, Tensor]:
    trunk, cfg = model.trunk, model.config
    H = cfg.n_heads
    out = {
        "model.embed_tokens.weight": trunk.tok_emb.weight.detach(),
        "model.norm.weight": trunk.final_norm.weight.detach(),
    }
    for i, block in enumerate(trunk.blocks):
        h = f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = block.norm1.weight.detach()
        out[h + "post_attention_layernorm.weight"] = block.norm2.weight.detach()
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = getattr(block.attn.qkv, kind).detach().chunk(3)
            out[h + f"self_attn.q_proj.{kind}"] = deinterleave_rope_rows(q, H)
            out[h + f"self_attn.k_proj.{kind}"] = deinterleave_rope_rows(k, H)
            out[h + f"self_attn.v_proj.{kind}"] = v
            out[h + f"self_attn.o_proj.{kind}"] = getattr(block.attn.proj, kind).detach()
            gate, up = getattr(block.mlp.fc_in, kind).detach().chunk(2)  # lm's fc_in is [gate; up]
            out[h + f"mlp.gate_proj.{kind}"], out[h + f"mlp.up_proj.{kind}"] = gate, up
            out[h + f"mlp.down_proj.{kind}"] = getattr(block.mlp.fc_out, kind).detach()
    return out


def _lm_head(model: nn.Module, arch: str, where: Path) -> dict[str, Tensor]:
    """An untied head's weight (a tied one is the embedding, which transformers re-ties). Neither HF class has
    a head bias: a zero one (as lm initialises it) is dropped, a trained one refused."""
    if model.config.tie_embeddings:
        return {}
    bias = model.lm_head.bias
    if bias is not None and bool(bias.detach().ne(0).any()):
        raise LmError(
            f"{where}: lm_head.bias is non-zero and {_AUTO[arch][0]}'s LM head has no bias (train with "
            "model.tie_embeddings: true or model.bias: false to export it)"
        )
    return {"lm_head.weight": model.lm_head.weight.detach()}


# ---- config.json -------------------------------------------------------------------------------------------


def _hf_config(arch: str, cfg: ModelConfig, config: dict[str, Any]) -> dict[str, Any]:
    """The transformers config.json for `arch`, from lm's ModelConfig and export config."""
    eot = (config.get("special_ids") or {}).get(EOT)
    common = {
        "architectures": [_AUTO[arch][0]],
        "model_type": arch,
        "vocab_size": config["vocab_size"],
        "pad_token_id": config["pad_id"],
        "bos_token_id": eot,
        "eos_token_id": eot,
        "dtype": "float32",
        "torch_dtype": "float32",
    }  # torch_dtype: the key of transformers 4.x
    if arch == "bert":
        return {
            **common,
            "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff,
            "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attention_dropout,
            "max_position_embeddings": config["max_len"],
            "type_vocab_size": 2,
            "layer_norm_eps": cfg.norm_eps,
            "position_embedding_type": "absolute",
            "classifier_dropout": None,
            "problem_type": "multi_label_classification",
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
        }
    if arch == "gpt2":
        return {
            **common,
            "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.d_ff,
            "n_positions": config["max_len"],
            "n_ctx": config["max_len"],
            "activation_function": "gelu",
            "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.attention_dropout,
            "layer_norm_epsilon": cfg.norm_eps,
            "scale_attn_weights": True,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    theta = resolve_attention_options(cfg.attention, cfg.attention_options).rope_theta
    return {
        **common,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.d_model // cfg.n_heads,
        "intermediate_size": cfg.d_ff,
        "hidden_act": "silu",
        "max_position_embeddings": config["max_len"],
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "rope_theta": theta,  # 5.x, 4.x
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attention_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


# ---- the directory -----------------------------------------------------------------------------------------


def _check_destination(model_dir: Path, out_dir: Path) -> None:
    """out_dir is replaced as a whole: never the lm export itself, a folder holding it, or a folder of other
    files."""
    src, dst = model_dir.resolve(), out_dir.resolve()
    if dst == src or dst in src.parents:
        raise LmError(f"--hf {out_dir}: would replace the lm model in {model_dir}; choose another directory")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not _is_hf_dir(dst):
        raise LmError(f"--hf {out_dir}: exists and is not a Hugging Face export; choose a new directory")


def _is_hf_dir(path: Path) -> bool:
    """A directory whose config.json names a model_type (lm's own export config has none)."""
    try:
        return (
            isinstance(config := json.loads((path / EXPORT_CONFIG).read_text()), dict)
            and "model_type" in config
        )
    except (OSError, ValueError):
        return False


def _rows_as_lm_builds_them(out: Path, tokenizer_dir: Path, config: dict[str, Any]) -> None:
    """A classifier's tokenizer files answer `AutoTokenizer(text, truncation=True)` with the rows lm trained
    on: lm's own BPE gets a post-processor that puts <|cls|> first (a pretrained tokenizer already has its
    family's, e.g. [CLS] text [SEP]), and model_max_length becomes the model's max_len."""
    from lm.data.encoded import meta_roles

    if not (tokenizer_dir / "pretrained.json").is_file() and (out / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing

        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        cls_id = int(meta_roles(config)["cls"])
        cls = tok.id_to_token(cls_id)
        tok.post_processor = TemplateProcessing(
            single=f"{cls} $A", pair=f"{cls} $A $B", special_tokens=[(cls, cls_id)]
        )
        tok.save(str(out / "tokenizer.json"))
    settings = out / "tokenizer_config.json"
    if settings.is_file():
        data = json.loads(settings.read_text())
        atomic_write_json(settings, {**data, "model_max_length": int(config["max_len"])})


def export_hf(model_dir: Path, out_dir: Path) -> HfExport:
    """Write the lm export in model_dir as a transformers directory out_dir (config.json, model.safetensors
    and the tokenizer files), replacing out_dir atomically. Raises LmError for a model transformers cannot
    express."""
    from safetensors.torch import save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = read_export_config(model_dir)
    if config.get("ensemble"):
        raise LmError(
            f"{model_dir}: an ensemble of {config['ensemble'].get('members', 'several')} classifiers does "
            "not export to Hugging Face (transformers has no ensemble class); train with train.ensemble: 1"
        )
    cfg = ModelConfig.model_validate(config["model"])
    arch = hf_architecture(cfg, config["task"], model_dir)
    _check_destination(model_dir, out_dir)
    model, config = load_exported(model_dir)
    weights = {"bert": _bert_weights, "gpt2": _gpt2_weights, "llama": _llama_weights}[arch](model)
    if arch != "bert":
        weights |= _lm_head(model, arch, model_dir)
    weights = {k: v.to(torch.float32).contiguous().clone() for k, v in weights.items()}  # no shared storage
    with atomic_dir(out_dir) as tmp:
        save_file(weights, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", _hf_config(arch, cfg, config))
        for name in TOKENIZER_FILES:
            if (model_dir / "tokenizer" / name).is_file():
                shutil.copyfile(model_dir / "tokenizer" / name, tmp / name)
        if config["task"] == "classify":
            _rows_as_lm_builds_them(tmp, model_dir / "tokenizer", config)
    return HfExport(architecture=_AUTO[arch][0], auto_class=_AUTO[arch][1], out_dir=out_dir)
