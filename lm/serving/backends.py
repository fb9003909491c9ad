"""Scorers: one interface over the eager model and the ONNX artifacts `lm export` writes to serving/.

A scorer turns a padded batch of token ids into classifier probabilities; the server (and the export check)
use any backend the same way:

    scorer = load_scorer(Path("models"), "onnx-int8", threads=1)
    probs = scorer.score(input_ids, attention_mask)  # int64 (B, L), bool (B, L) -> float32 (B,)

- eager: the exported lm model (lm/model/export.py) in eval mode, needs lm's model code;
- onnx: serving/model.onnx run by ONNX Runtime;
- onnx-int8: serving/model.int8.onnx, the same with its matrix multiplications dynamically quantized to int8.
The two artifacts need onnxruntime alone, no lm code and no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lm.errors import LmError
from lm.paths import SERVING

BACKENDS = ("eager", "onnx", "onnx-int8")
ARTIFACTS = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
SERVING_CONFIG = "config.json"


class Scorer(Protocol):
    name: str  # "eager" | "onnx" | "onnx-int8"

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """input_ids int64 (B, L), attention_mask bool (B, L) -> float32 (B,) classifier probabilities."""
        ...


def batch_arrays(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and bool mask, contiguous, both (B, L); LmError otherwise (every backend's input rule)."""
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    mask = np.ascontiguousarray(attention_mask, dtype=bool)
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise LmError(f"input_ids {ids.shape} and attention_mask {mask.shape} must both be (B, L)")
    return ids, mask


class EagerScorer:
    """The exported lm model (a ClassifierEnsemble for the default params) scored in eager PyTorch."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = (torch.from_numpy(a).to(self.device) for a in batch_arrays(input_ids, attention_mask))
        with torch.inference_mode():
            logits = self.model(ids, mask).logits  # (B,)
            return torch.sigmoid(logits.float()).cpu().numpy()


class OnnxScorer:
    """An ONNX artifact written by `lm export`, run by ONNX Runtime on the CPU: (input_ids, attention_mask) ->
    probabilities (B,). `threads` is the session's intra-op pool (one pool per scoring thread's call)."""

    def __init__(self, path: Path, name: str, threads: int = 1, device: str = "cpu"):
        import onnxruntime as ort

        self.name = name
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # idle pool threads sleep, not spin: the event loop and the other scoring thread need the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise LmError(
                    f"serve.device=cuda with backend {name} needs onnxruntime-gpu (its "
                    "CUDAExecutionProvider): install it, or serve with backend eager on cuda"
                )
            providers.insert(0, "CUDAExecutionProvider")  # nodes it lacks (some int8 ones) stay on the CPU
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        ids, mask = batch_arrays(input_ids, attention_mask)
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def read_serving_config(export_dir: Path) -> dict:
    """serving/config.json: task, max_len, threshold, pad_id, cls_id (what a server needs to tokenize and
    label)."""
    path = Path(export_dir) / SERVING_CONFIG
    if not path.exists():
        raise LmError(f"{path} not found: run `lm export` (or `dvc repro`) first")
    return json.loads(path.read_text())


def load_scorer(
    model_dir: Path,
    backend: str = "eager",
    export_dir: Path | None = None,
    *,
    threads: int = 1,
    device: str = "cpu",
) -> Scorer:
    """The scorer for `backend` on `device` (serve.device): eager reads model_dir (models/), the others
    export_dir (default serving/)."""
    if backend not in BACKENDS:
        raise LmError(f"unknown scoring backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    check_device(device)
    if backend == "eager":
        from lm.model.export import load_exported

        model, config = load_exported(Path(model_dir))
        if config["task"] != "classify":
            raise LmError(f"{model_dir} holds a {config['task']} model: scoring serves classifiers only")
        return EagerScorer(model, device)
    return OnnxScorer(artifact_path(backend, export_dir), backend, threads, device)


def check_device(device: str) -> None:
    """LmError naming serve.device when it asks for a GPU torch cannot see (`lm serve` checks it before the
    server starts, so it is one line, not a failed startup)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise LmError(
            "serve.device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False): set "
            "serve.device: cpu"
        )


def artifact_path(backend: str, export_dir: Path | None = None) -> Path:
    """The `lm export` artifact an onnx / onnx-int8 backend reads; LmError naming the fix when it is missing
    (checked by `lm serve` before the server starts, so a missing file is one line, not a failed startup)."""
    path = (Path(export_dir) if export_dir is not None else SERVING) / ARTIFACTS[backend]
    if not path.exists():
        raise LmError(
            f"{path} not found: run `lm export` (or `dvc repro`) to write the {backend} artifact, "
            "or serve with --backend eager"
        )
    return path
