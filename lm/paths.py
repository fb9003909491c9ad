"""Where each stage reads and writes, relative to the repository root (the DVC stage table)."""

from pathlib import Path

RAW = Path("data/raw")
TOKENIZER = Path("data/tokenizer")
ENCODED = Path("data/encoded")
SPLIT = Path("data/split")
MODELS = Path("models")
PRETRAINED = Path("pretrained")
REPORTS = Path("reports")
TRAIN_REPORTS = REPORTS / "train"
PRETRAIN_REPORTS = REPORTS / "pretrain"
TRAIN_METRICS = TRAIN_REPORTS / "metrics.json"  # dvclive's training summary (losses, steps, cost figures)
PLOTS = REPORTS / "plots"  # plot data (JSON) for `dvc plots`
FIGURES = REPORTS / "figures"  # the same plots drawn as PNG
ATTENTION = REPORTS / "attention"
SPLIT_REPORT = REPORTS / "split.json"
METRICS = REPORTS / "metrics.json"  # headline figures (`dvc metrics`, `dvc exp show`)
EVALUATION = REPORTS / "evaluation.json"  # the full evaluation reports
PREDICTIONS = REPORTS / "predictions.md"
SERVING = Path("serving")  # inference artifacts written by `lm export` (TorchScript, INT8, tokenizer copy)
SERVING_REPORT = REPORTS / "serving.json"  # each exported variant checked against the eager model

# a training run writes here and its outputs replace models/ and reports/train/ only once it completes; an
# interrupted run's checkpoints stay here for the next run to resume (git-ignored, outside every DVC output)
STAGING = Path(".lm/staging")


def staged(path: Path) -> Path:
    """Where a run writes `path` (a stage output, relative to the repository root) until it completes."""
    return STAGING / (path.name if path.is_absolute() else path)
