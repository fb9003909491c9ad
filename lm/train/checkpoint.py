"""Checkpoints (the whole training state) and the exported model (weights + config to rebuild it).

A checkpoint holds the unwrapped model (no `module.` / `_orig_mod.` prefixes), optimizer, scheduler, scaler,
step, epoch, data position, RNG states, best-model tracking, early-stopping counters, the logged metrics and
the resolved params, written atomically by rank 0 only and loaded with torch.load(weights_only=True) (so it
holds tensors and plain Python values, never numpy objects). The export is what inference needs and nothing
else: `model.safetensors` (the best weights by validation loss) + `config.json` + the tokenizer files.
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
    """The process's random generators as tensors, ints and lists only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then write a temporary sibling and rename it over `path`: a kill at any moment
    leaves the previous checkpoint or the new one, never a truncated file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors and plain Python values only, so loading it
    can never run code."""
    if not path.exists():
        raise LmError(f"{path} not found: train first (`lm train`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise LmError(f"{path} is not a readable lm checkpoint ({type(err).__name__}); train again without --resume") from None


def remove_stale_temporaries(out_dir: Path) -> None:
    """Delete temporary files a killed writer left behind (`.checkpoint.pt.XXXX.tmp` and the like)."""
    if out_dir.is_dir():
        for tmp in out_dir.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


# params that may differ between a run and its resumption: they change how, not what, is computed
RUNTIME_KEYS = ("train.threads", "train.max_restarts", "train.backend", "train.device", "train.compile")


def resume_signature(params_dump: dict[str, Any]) -> dict[str, Any]:
    """The params a resumed run must share with the checkpoint, flattened to dotted keys."""
    flat: dict[str, Any] = {}
    for key in ("task", "seed"):
        flat[key] = params_dump.get(key)
    flat["data.threshold"] = params_dump.get("data", {}).get("threshold")
    for section in ("model", "train"):
        for k, v in params_dump.get(section, {}).items():
            flat[f"{section}.{k}"] = v
    for key in RUNTIME_KEYS:
        flat.pop(key, None)
    return flat


def check_resumable(ckpt: dict[str, Any], params_dump: dict[str, Any], data_fingerprint: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written with other params or data: the continuation would not be the
    run those params describe."""
    saved, now = resume_signature(ckpt.get("params", {})), resume_signature(params_dump)
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise LmError(
                f"{path} was written with {key}={saved.get(key)!r} but the params say {now.get(key)!r}: "
                "restore that value to resume, or train from scratch (without --resume)"
            )
    old = ckpt.get("data", {})
    for key, value in data_fingerprint.items():
        if old.get(key) != value:
            raise LmError(
                f"{path} was trained on other data ({key} {old.get(key)!r} != {value!r}): "
                "train from scratch (without --resume)"
            )


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
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / EXPORT_CONFIG
    if not path.exists():
        raise LmError(f"{path} not found: train a model first (`lm train` or `dvc repro`), or pass --model DIR")
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
            ModelConfig.model_validate(config["model"]), task=config["task"], vocab_size=config["vocab_size"],
            max_len=config["max_len"], pad_id=config["pad_id"], seed=seed,
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
        raise LmError(f"{model_dir / EXPORT_CONFIG} does not describe an lm model ({err}): re-run `lm train`") from None
    weights = model_dir / EXPORT_WEIGHTS
    if not weights.exists():
        raise LmError(f"{weights} not found: re-run `lm train`")
    expected = config.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise LmError(f"{weights} is damaged or partly written (its sha256 differs from config.json's): re-run `lm train`")
    try:
        load_model(model, str(weights), strict=True)
    except Exception as err:  # safetensors raises several types for a damaged or foreign file
        raise LmError(f"{weights} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:120]}): "
                      "re-run `lm train`") from None
    if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
        raise LmError(f"{weights} holds non-finite weights (NaN/inf): re-run `lm train`")
    model.to(device).eval()
    return model, config
