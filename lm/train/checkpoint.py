"""Checkpoints (the whole training state) and the exported model (weights + config to rebuild it).

A checkpoint holds the unwrapped model (no `module.` / `_orig_mod.` prefixes), optimizer, scheduler, scaler,
step, epoch, data position, RNG states and the resolved params, written atomically by rank 0 only. The
export is what inference needs and nothing else: `model.safetensors` + `config.json` + the tokenizer files.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lm.errors import LmError
from lm.io import atomic_write_bytes, atomic_write_json

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise LmError(f"{path} not found: train first (`lm train`)")
    return torch.load(path, map_location="cpu", weights_only=False)


def export_model(model: nn.Module, out_dir: Path, config: dict[str, Any], tokenizer_dir: Path) -> None:
    """Write weights (safetensors handles the tied embedding/head), config.json and a tokenizer copy."""
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{EXPORT_WEIGHTS}.tmp"
    save_model(unwrap(model), str(tmp))
    tmp.replace(out_dir / EXPORT_WEIGHTS)
    atomic_write_json(out_dir / EXPORT_CONFIG, config)
    tok_out = out_dir / "tokenizer"
    staging = out_dir / ".tokenizer.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(tokenizer_dir, staging)
    shutil.rmtree(tok_out, ignore_errors=True)
    staging.replace(tok_out)


def read_export_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / EXPORT_CONFIG
    if not path.exists():
        raise LmError(f"{path} not found: train a model first (`lm train` or `dvc repro`), or pass --model DIR")
    return json.loads(path.read_text())


def load_exported(model_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exported model from config.json and load its weights (strictly)."""
    from safetensors.torch import load_model

    from lm.config import ModelConfig
    from lm.model import build_model

    config = read_export_config(model_dir)
    model = build_model(
        ModelConfig.model_validate(config["model"]),
        task=config["task"],
        vocab_size=config["vocab_size"],
        max_len=config["max_len"],
        pad_id=config["pad_id"],
        seed=config["seed"],
    )
    weights = model_dir / EXPORT_WEIGHTS
    if not weights.exists():
        raise LmError(f"{weights} not found: re-run `lm train`")
    load_model(model, str(weights), strict=True)
    model.to(device).eval()
    return model, config
