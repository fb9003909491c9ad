"""`lm export`: the trained classifier as ONNX artifacts for ONNX Runtime, each checked against eager.

serving/ holds
- model.onnx: `(input_ids int64 (B, L), attention_mask bool (B, L)) -> probabilities float32 (B,)` of the
  exported model (the whole ensemble when there are several members), written by torch.onnx's dynamo exporter
  with batch size and length free, and checked under ONNX Runtime on other shapes than its example, padding
  included, before it is kept;
- model.int8.onnx: the same after ONNX Runtime's dynamic quantization (int8 weights for every MatMul,
  activations quantized on the fly), the embeddings and norms staying fp32;
- tokenizer/ (a copy of the model's) and config.json (task, max_len, threshold, pad_id, cls_id).
Both artifacts load with onnxruntime alone. `check_variants` scores the test split with every backend and
reports max |score - eager|, ROC-AUC and its delta, file size and single-request latency.

A decoder (clm) or masked LM is not exported: generation needs the KV cache as graph inputs and outputs, which
lm serves from eager PyTorch instead (docs/serving.md).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lm.errors import LmError
from lm.serving.backends import ARTIFACTS, SERVING_CONFIG, EagerScorer, OnnxScorer, Scorer

INT8_TOLERANCE = 0.005  # |ROC-AUC(int8) - ROC-AUC(eager)| allowed
ONNX_TOLERANCE = 1e-4  # max |probability| difference of model.onnx vs eager on shapes unlike the example
LATENCY_REQUESTS = 200
LATENCY_WARMUP = 20


class ProbabilityModel(nn.Module):
    """The serving signature: (input_ids, attention_mask) -> sigmoid of the classifier's logit, fp32 (B,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(input_ids, attention_mask).logits.float())


def _random_batch(batch: int, length: int, vocab: int, pad_id: int, cls_id: int, seed: int):
    """Token ids with <|cls|> first and right padding of varied length (row 0 always full)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, L)
    ids[:, 0] = cls_id
    return ids.masked_fill(~mask, pad_id), mask


def export_onnx(model: nn.Module, config: dict, path: Path) -> None:
    """Export the serving signature with batch and length free and check it under ONNX Runtime on batch sizes
    and lengths unlike the example's (a graph that baked in a shape fails here rather than in the server)."""
    wrapper = ProbabilityModel(model).eval()
    vocab, pad_id, cls_id, max_len = (
        config["vocab_size"],
        config["pad_id"],
        cls_token_id(config),
        config["max_len"],
    )
    example = _random_batch(2, min(8, max_len), vocab, pad_id, cls_id, seed=0)
    # the mask's axes are the ids' (named once: naming both makes the exporter warn that it drops a name)
    dynamic = torch.export.Dim.DYNAMIC
    shapes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: dynamic, 1: dynamic}}
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # not "torchvision is not installed" on every export: lm needs none
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=True,
                input_names=["input_ids", "attention_mask"],
                output_names=["probabilities"],
                dynamic_shapes=shapes,
                external_data=False,  # one file: lm's classifiers stay far below protobuf's 2 GB
                verbose=False,
            )
    finally:
        registration.setLevel(level)
    scorer = OnnxScorer(path, "onnx")
    for seed, (batch, length) in enumerate([(1, 1), (3, max_len), (5, max(1, max_len // 2 + 1))], start=1):
        ids, mask = _random_batch(batch, length, vocab, pad_id, cls_id, seed)
        with torch.no_grad():
            expected = wrapper(ids, mask).numpy()
        diff = float(np.abs(scorer.score(ids.numpy(), mask.numpy()) - expected).max())
        if not diff <= ONNX_TOLERANCE:
            raise LmError(
                f"export: model.onnx differs from eager by {diff:.2e} on a ({batch}, {length}) batch: "
                "this model does not export with dynamic shapes; serve it with --backend eager"
            )


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic quantization of `source`: int8 weights, activations quantized per batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(f".{target.name}.pre")
    # shape inference and graph fusion first, as ONNX Runtime advises (its symbolic shape inference fails on
    # some graphs, e.g. an ensemble; ONNX shape inference is enough for dynamic quantization)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    prepared.unlink()


def cls_token_id(config: dict) -> int:
    from lm.data.encoded import meta_roles

    return int(meta_roles(config)["cls"])


def serving_config(config: dict) -> dict:
    return {
        "task": config["task"],
        "max_len": config["max_len"],
        "threshold": config["threshold"],
        "pad_id": config["pad_id"],
        "cls_id": cls_token_id(config),
        "tokenizer_hash": config["tokenizer_hash"],
        "artifacts": dict(ARTIFACTS),
    }


def write_artifacts(model: nn.Module, config: dict, model_dir: Path, out_dir: Path) -> None:
    """Fill out_dir (a fresh directory) with both ONNX artifacts, config.json and the tokenizer copy."""
    from lm.io import atomic_write_json

    export_onnx(model, config, out_dir / ARTIFACTS["onnx"])
    quantize_int8(out_dir / ARTIFACTS["onnx"], out_dir / ARTIFACTS["onnx-int8"])
    shutil.copytree(Path(model_dir) / "tokenizer", out_dir / "tokenizer")
    atomic_write_json(out_dir / SERVING_CONFIG, serving_config(config))


def _score_all(scorer: Scorer, items, batch_size: int) -> np.ndarray:
    out = []
    for lo in range(0, len(items), batch_size):
        batch = items.batch(np.arange(lo, min(lo + batch_size, len(items))))
        out.append(scorer.score(batch["input_ids"].numpy(), batch["attention_mask"].numpy()))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def single_request_latency(
    scorer: Scorer, items, n: int = LATENCY_REQUESTS, warmup: int = LATENCY_WARMUP
) -> dict:
    """p50 / p99 milliseconds of scoring one test text per call (cycling over the test rows) after warm-up."""
    if not len(items):
        return {"latency_p50_ms": None, "latency_p99_ms": None}
    singles = [items.batch(np.array([i % len(items)])) for i in range(n)]
    singles = [(b["input_ids"].numpy(), b["attention_mask"].numpy()) for b in singles]
    for ids, mask in singles[:warmup]:
        scorer.score(ids, mask)
    times = []
    for ids, mask in singles:
        start = time.perf_counter()
        scorer.score(ids, mask)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "latency_p50_ms": round(float(np.percentile(times, 50)), 4),
        "latency_p99_ms": round(float(np.percentile(times, 99)), 4),
    }


def _roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_true, probs)) if len(np.unique(y_true)) == 2 else None


def check_variants(
    eager: EagerScorer, out_dir: Path, weights: Path, items, threshold: float, batch_size: int
) -> dict:
    """Score the test items with eager and each artifact in out_dir: agreement, ROC-AUC, size and latency."""
    y_true = items.enc.targets[items.rows] >= threshold
    reference = _score_all(eager, items, batch_size)
    eager_auc = _roc_auc(y_true, reference)
    report = {
        "eager": {
            "roc_auc": eager_auc,
            "size_bytes": Path(weights).stat().st_size,
            **single_request_latency(eager, items),
        }
    }
    for name, file in ARTIFACTS.items():
        scorer = OnnxScorer(out_dir / file, name, threads=torch.get_num_threads())
        probs = _score_all(scorer, items, batch_size)
        auc = _roc_auc(y_true, probs)
        row = {
            "max_abs_diff": float(np.abs(probs - reference).max()) if len(probs) else 0.0,
            "roc_auc": auc,
            "roc_auc_delta": None if auc is None or eager_auc is None else auc - eager_auc,
            "size_bytes": (out_dir / file).stat().st_size,
            **single_request_latency(scorer, items),
        }
        if name == "onnx-int8":
            row["within_tolerance"] = (
                row["roc_auc_delta"] is None or abs(row["roc_auc_delta"]) <= INT8_TOLERANCE
            )
        report[name] = row
    return report


def export_serving(
    model_dir: Path,
    encoded_dir: Path,
    split_dir: Path,
    out_dir: Path,
    report_path: Path,
    *,
    threshold: float,
    batch_size: int,
) -> dict:
    """Write serving/ and reports/serving.json (atomically) and return the report.

    A clm / mlm model is not exported (the artifacts serve classifiers): serving/config.json and the report
    say so, and the stage still succeeds, so `dvc repro` runs for every task."""
    from lm.data.batches import make_items
    from lm.data.encoded import Encoded
    from lm.data.split import load_split
    from lm.io import atomic_dir, atomic_write_json
    from lm.model.export import load_exported

    model, config = load_exported(Path(model_dir))
    if config["task"] != "classify":
        report = {
            "task": config["task"],
            "exported": False,
            "note": "classify only: lm export serves classifiers",
        }
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(
                tmp / SERVING_CONFIG, {"task": config["task"], "artifacts": {}, "note": report["note"]}
            )
        atomic_write_json(report_path, report)
        return report
    enc = Encoded.open(encoded_dir)
    enc.check_task("classify")
    if config["tokenizer_hash"] != enc.meta["tokenizer_hash"]:
        raise LmError(f"{model_dir} was trained with another tokenizer than {encoded_dir}: re-run `lm train`")
    items = make_items(enc, load_split(split_dir)["test"], "classify", enc.max_len)
    with atomic_dir(out_dir) as tmp:
        write_artifacts(model, config, Path(model_dir), tmp)
    from lm.model.export import EXPORT_WEIGHTS

    variants = check_variants(
        EagerScorer(model), Path(out_dir), Path(model_dir) / EXPORT_WEIGHTS, items, threshold, batch_size
    )
    report = {
        "task": "classify",
        "exported": True,
        "n_test": len(items),
        "threshold": threshold,
        "members": (config.get("ensemble") or {}).get("members", 1),
        "int8_tolerance": INT8_TOLERANCE,
        "threads": torch.get_num_threads(),
        **variants,
    }
    atomic_write_json(report_path, report)
    return report


def summary_lines(report: dict) -> list[str]:
    """What the stage prints: one line per variant, and a warning when INT8 is outside its tolerance."""
    if not report["exported"]:
        return [f"export: task={report['task']} is not exported ({report['note']})"]
    eager = report["eager"]
    auc = "n/a" if eager["roc_auc"] is None else f"{eager['roc_auc']:.4f}"
    lines = [f"export: eager ROC-AUC {auc}, p50 {eager['latency_p50_ms']:.2f} ms"]
    for name in ARTIFACTS:
        row = report[name]
        delta = "n/a" if row["roc_auc_delta"] is None else f"{row['roc_auc_delta']:+.4f}"
        lines.append(
            f"export: {name} max |diff| {row['max_abs_diff']:.2e}, ROC-AUC delta {delta}, "
            f"{row['size_bytes'] / 1e6:.2f} MB, p50 {row['latency_p50_ms']:.2f} ms, "
            f"p99 {row['latency_p99_ms']:.2f} ms"
        )
    if not report["onnx-int8"]["within_tolerance"]:
        lines.append(
            f"warning: INT8 ROC-AUC differs from eager by {report['onnx-int8']['roc_auc_delta']:+.4f} "
            f"(more than {INT8_TOLERANCE}); serve the onnx backend instead"
        )
    return lines
