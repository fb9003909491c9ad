"""Start a model from pretrained weights (`train.init_from`): the trunk and embeddings of an earlier lm model
(a masked- or causal-LM run on unlabelled text), or of a Hugging Face GPT-2 / Llama / BERT / RoBERTa /
DistilBERT checkpoint directory.

Why a trunk and not the whole model: the pretraining task's head (an LM head) means nothing to a classifier,
whose pooler and classifier start fresh; when the source was trained for the same task, its head loads too.
Token ids only mean the same thing under the same tokenizer, so an lm source must have been trained with
the very tokenizer of this run, and a Hugging Face source's tokenizer.json must be this run's tokenizer
(`tokenizer.pretrained`; their content hashes are compared, not their sizes); anything else is refused with
one line instead of a model that learns from scrambled embeddings. The architecture must match as well (named
key by key); a shorter `max_len` than the source's keeps the first rows of a learned position table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lm.errors import LmError

# ModelConfig keys that change no trunk weight: they may differ between pretraining and fine-tuning
# (tie_embeddings concerns the LM head only, which a new task builds afresh)
FREE_KEYS = {"dropout", "attention_dropout", "pooling", "gradient_checkpointing", "tie_embeddings"}


@dataclass
class InitReport:
    """What was loaded, for the training log."""

    source: str
    kind: str  # "lm" or the Hugging Face model_type
    loaded: int  # tensors copied
    fresh: list[str]  # parameters left at their initialisation (the new task head)


def _check_checkpoint_tokenizer(
    path: Path, checkpoint_vocab: int, *, vocab_size: int, tokenizer_hash: str | None
) -> None:
    """A Hugging Face checkpoint's embeddings mean its own tokenizer's ids: the run's tokenizer must be that
    tokenizer by content (the hash of its tokenizer.json and roles), not merely of the same size. A checkpoint
    directory without tokenizer.json can only be checked by size."""
    fix = f"set tokenizer.pretrained: {path} (the checkpoint's own tokenizer)"
    if tokenizer_hash is None:  # a caller with no tokenizer to compare (library use): nothing to check
        return
    if (path / "tokenizer.json").is_file():
        from lm.tokenizer.pretrained import open_hf

        theirs = open_hf(path).hash
        if theirs != tokenizer_hash:
            raise LmError(
                f"train.init_from: {path} was pretrained with another tokenizer than this run's (tokenizer "
                f"{theirs[:12]}, this run {str(tokenizer_hash)[:12]}): {fix}"
            )
    elif checkpoint_vocab != vocab_size:
        raise LmError(
            f"train.init_from: {path} has a vocabulary of {checkpoint_vocab} tokens, this run's tokenizer "
            f"has {vocab_size}: {fix}"
        )


def _source_state(
    path: Path, *, vocab_size: int, tokenizer_hash: str | None
) -> tuple[dict[str, torch.Tensor], dict, str, str]:
    """(state dict in lm's names, model config dict, source task, kind) of an lm export or a HF directory."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise LmError(
            f"train.init_from: {path} has no config.json (give an lm model directory such as models/, "
            "or a Hugging Face save_pretrained directory)"
        )
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise LmError(f"train.init_from: {config_file} is not valid JSON ({err.msg})") from None
    if "model_type" in raw:  # Hugging Face
        from lm.model.hf import convert_hf_state_dict, read_hf_weights, spec_from_hf_config

        spec = spec_from_hf_config(raw, source=config_file, allow_approximate_gelu=True)
        _check_checkpoint_tokenizer(
            path, spec.vocab_size, vocab_size=vocab_size, tokenizer_hash=tokenizer_hash
        )
        from lm.model.hf import ENCODERS

        state = convert_hf_state_dict(read_hf_weights(path), spec)
        task = "encoder" if spec.arch in ENCODERS else "clm"  # an encoder's head (if any) is never lm's
        return state, {**spec.model.model_dump(), "max_len": spec.max_len}, task, spec.arch
    from safetensors.torch import load_file

    from lm.model.export import EXPORT_WEIGHTS

    for key in ("task", "model", "vocab_size", "max_len"):
        if key not in raw:
            raise LmError(
                f"train.init_from: {config_file} lacks {key!r}: not an lm model export (re-run `lm train`)"
            )
    if raw["vocab_size"] != vocab_size or (
        tokenizer_hash is not None and raw.get("tokenizer_hash") != tokenizer_hash
    ):
        raise LmError(
            f"train.init_from: {path} was trained with another vocabulary "
            f"({raw['vocab_size']} tokens, tokenizer "
            f"{str(raw.get('tokenizer_hash'))[:12]}) than this run ({vocab_size} tokens, tokenizer "
            f"{str(tokenizer_hash)[:12]}): pretrain with this run's tokenizer (data/tokenizer)"
        )
    weights = path / EXPORT_WEIGHTS
    if not weights.exists():
        raise LmError(f"train.init_from: {weights} not found (the source run did not finish its export)")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise LmError(
            f"train.init_from: {weights} is not a readable safetensors file ({type(err).__name__})"
        ) from None
    if raw.get("ensemble"):  # an ensemble's members share one architecture: start from the first
        state = {k.removeprefix("members.0."): v for k, v in state.items() if k.startswith("members.0.")}
    return state, {**raw["model"], "max_len": raw["max_len"]}, raw["task"], "lm"


def _check_architecture(model: nn.Module, source_cfg: dict, path: Path) -> None:
    ours = model.config.model_dump()
    for key in sorted(ours):
        if key in FREE_KEYS or key not in source_cfg:
            continue
        if source_cfg[key] != ours[key]:
            raise LmError(
                f"train.init_from: {path} has model.{key}={source_cfg[key]!r}, the params say {ours[key]!r}: "
                f"set model.{key} to {source_cfg[key]!r} to fine-tune it"
            )
    if model.max_len > int(source_cfg["max_len"]) and model.config.positions == "learned":
        raise LmError(
            f"train.init_from: {path} learned positions up to {source_cfg['max_len']} tokens, this run needs "
            f"{model.max_len}: lower encode.max_len to at most {source_cfg['max_len']}"
        )


@torch.no_grad()
def init_from(
    model: nn.Module, path: str | Path, *, task: str, vocab_size: int, tokenizer_hash: str | None
) -> InitReport:
    """Copy pretrained weights into `model` in place (see the module docstring); returns what was loaded.
    A classifier started from a Hugging Face encoder also takes its pretrained pooler, when it has one."""
    path = Path(path)
    if not path.is_dir():
        raise LmError(f"train.init_from: {path} is not a directory (give a trained model directory)")
    state, source_cfg, source_task, kind = _source_state(
        path, vocab_size=vocab_size, tokenizer_hash=tokenizer_hash
    )
    _check_architecture(model, source_cfg, path)
    if source_cfg.get("tie_embeddings"):  # safetensors stores a shared tensor under one of its names only
        for a, b in (("trunk.tok_emb.weight", "lm_head.weight"), ("lm_head.weight", "trunk.tok_emb.weight")):
            if a not in state and b in state:
                state[a] = state[b]
    same_task = source_task == task
    # a Hugging Face encoder's pretrained pooler (dense + tanh on the CLS row) is the one its classifier uses
    wanted = ("trunk.", "pooler.") if task == "classify" and source_task == "encoder" else ("trunk.",)
    target = model.state_dict()
    loaded: set[str] = set()
    for name, tensor in target.items():
        if not name.startswith(wanted) and not same_task:
            continue
        if name not in state:
            if name.startswith("trunk."):
                raise LmError(f"train.init_from: {path} lacks {name} (a different architecture)")
            continue
        value = state[name]
        if name == "trunk.positions.table.weight" and value.shape[0] > tensor.shape[0]:
            value = value[: tensor.shape[0]]  # a shorter context keeps the first positions
        if tuple(value.shape) != tuple(tensor.shape):
            raise LmError(
                f"train.init_from: {name} is {tuple(value.shape)} in {path}, {tuple(tensor.shape)} here"
            )
        tensor.copy_(value.to(tensor.dtype))
        loaded.add(name)
    fresh = [n for n in target if n not in loaded]
    return InitReport(str(path), kind, len(loaded), fresh)
