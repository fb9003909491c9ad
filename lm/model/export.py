"""The exported model: what inference needs and nothing else, written by training and read by evaluation,
inference and fine-tuning (which is why it lives beside the model, not in lm/train).

An export directory holds `model.safetensors` (the selected weights), `config.json` (what rebuilds the module:
task, model params, vocabulary, the tokenizer's hash and the weights' sha256) and a copy of the tokenizer
files. `export_config` writes the config's contents and `build_exported` / `load_exported` read them back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lm.errors import LmError
from lm.io import atomic_write_json, hash_file

if TYPE_CHECKING:
    from lm.config import Params
    from lm.data.encoded import Encoded

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def export_config(params: Params, enc: Encoded) -> dict[str, Any]:
    """What config.json records besides the weights' hash: enough to rebuild the module (build_exported), to
    check the tokenizer it was trained with, and the whole params for the record."""
    return {
        "task": params.task,
        "model": params.model.model_dump(),
        "vocab_size": enc.vocab_size,
        "max_len": enc.max_len,
        "pad_id": enc.pad_id,
        "special_ids": enc.meta["special_ids"],
        "roles": enc.roles,
        "tokenizer_hash": enc.meta["tokenizer_hash"],
        "seed": params.seed,
        "threshold": params.data.threshold,
        "label_names": list(params.data.label_names),
        "params": params.model_dump(),
    }


def export_model(model: nn.Module, out_dir: Path, config: dict[str, Any], tokenizer_dir: Path) -> None:
    """Write weights (safetensors handles the tied embedding/head), config.json and a tokenizer copy.

    config.json records the weights' sha256, so a truncated, damaged or half-replaced model.safetensors is
    refused with one line at load time instead of failing deep inside safetensors or scoring NaN.
    """
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{EXPORT_WEIGHTS}.tmp"
    save_model(unwrap(model), str(tmp))
    config = {**config, "weights_sha256": file_sha256(tmp)}
    tmp.replace(out_dir / EXPORT_WEIGHTS)
    atomic_write_json(out_dir / EXPORT_CONFIG, config)
    tok_out = out_dir / "tokenizer"
    staging = out_dir / ".tokenizer.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tokenizer_dir, staging)
    shutil.rmtree(tok_out, ignore_errors=True)
    staging.replace(tok_out)


def export_ensemble(member_dirs: list[Path], out_dir: Path) -> None:
    """Join exported members (same architecture and tokenizer) into one exported ClassifierEnsemble."""
    from lm.model.ensemble import ClassifierEnsemble

    members, configs = zip(*(load_exported(d) for d in member_dirs))
    config = {k: v for k, v in configs[0].items() if k != "weights_sha256"}
    config["ensemble"] = {"members": len(members), "seeds": [c["seed"] for c in configs]}
    export_model(ClassifierEnsemble(list(members)), out_dir, config, member_dirs[0] / "tokenizer")


def file_sha256(path: Path) -> str:
    return hash_file(path).hexdigest()


def read_export_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / EXPORT_CONFIG
    if not path.exists():
        raise LmError(
            f"{path} not found: train a model first (`lm train` or `dvc repro`), or pass --model DIR"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LmError(f"{path} is not valid JSON: re-run `lm train`") from None
    if not isinstance(config, dict):
        raise LmError(f"{path} is not an lm model config: re-run `lm train`")
    return config


def build_exported(config: dict[str, Any]) -> nn.Module:
    """The untrained module that config.json describes (a ClassifierEnsemble when it names members)."""
    from lm.config import ModelConfig
    from lm.model import build_model

    def member(seed: int) -> nn.Module:
        return build_model(
            ModelConfig.model_validate(config["model"]),
            task=config["task"],
            vocab_size=config["vocab_size"],
            max_len=config["max_len"],
            pad_id=config["pad_id"],
            seed=seed,
        )

    ensemble = config.get("ensemble")
    if not ensemble:
        return member(config["seed"])
    from lm.model.ensemble import ClassifierEnsemble

    return ClassifierEnsemble([member(s) for s in ensemble["seeds"]])


def load_exported(model_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported model from config.json and load its weights (strictly), checking their sha256."""
    from safetensors.torch import load_model

    model_dir = Path(model_dir)
    config = read_export_config(model_dir)
    try:
        model = build_exported(config)
    except (KeyError, TypeError, ValueError) as err:
        raise LmError(
            f"{model_dir / EXPORT_CONFIG} does not describe an lm model ({err}): re-run `lm train`"
        ) from None
    weights = model_dir / EXPORT_WEIGHTS
    if not weights.exists():
        raise LmError(f"{weights} not found: re-run `lm train`")
    expected = config.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise LmError(
            f"{weights} is damaged or partly written (its sha256 differs from config.json's): "
            "re-run `lm train`"
        )
    try:
        load_model(model, str(weights), strict=True)
    except Exception as err:  # safetensors raises several types for a damaged or foreign file
        raise LmError(
            f"{weights} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
            "re-run `lm train`"
        ) from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise LmError(f"{weights} holds non-finite weights (NaN/inf): re-run `lm train`")
    model.to(device).eval()
    return model, config
