"""Train / validation / test index arrays over encoded documents.

For `classify` the split is stratified on the binary label (target >= threshold) so that every part keeps
the corpus' class ratio, which matters when toxic rows are ~10%; for `mlm` / `clm` it is a seeded random
split by document, so no document leaks across parts. The stage writes each part as data/split/<part>.npy
(int64 document indices, sorted); `load_split` reads them back for training, evaluation and visualisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lm.errors import LmError

PARTS = ("train", "val", "test")


def split_indices(
    n_docs: int,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Return sorted int64 index arrays for train/val/test; `labels` (bool) makes the split stratified."""
    from sklearn.model_selection import train_test_split  # here: readers of a split need no sklearn

    idx = np.arange(n_docs, dtype=np.int64)
    n_test = int(round(n_docs * test_fraction))
    n_val = int(round(n_docs * val_fraction))
    if n_docs - n_test - n_val < 1:
        raise LmError(
            f"split: {n_docs} documents leave no training rows; lower split.val_fraction/test_fraction"
        )
    if labels is not None:
        counts = np.bincount(labels.astype(np.int64), minlength=2)
        if counts.min() < 3:
            raise LmError(
                f"split: need at least 3 rows of each class to stratify, found {counts[0]} negative and "
                f"{counts[1]} positive; check data.target_column and data.threshold"
            )
    rng = np.random.RandomState(seed)
    parts: dict[str, np.ndarray] = {}
    rest, rest_labels = idx, labels
    for name, size in (("test", n_test), ("val", n_val)):
        if size == 0:
            parts[name] = np.zeros(0, dtype=np.int64)
            continue
        stratify = rest_labels if rest_labels is not None and min(size, len(rest) - size) >= 2 else None
        rest_new, part = train_test_split(
            rest, test_size=size, random_state=rng.randint(2**31 - 1), stratify=stratify
        )
        parts[name] = part
        if rest_labels is not None:
            rest_labels = labels[rest_new]
        rest = rest_new
    parts["train"] = rest
    return {name: np.sort(parts[name]).astype(np.int64) for name in PARTS}


def split_summary(parts: dict[str, np.ndarray], labels: np.ndarray | None) -> dict:
    """Counts and class ratios per part, for reports/split.json."""
    summary: dict[str, dict] = {}
    for name in PARTS:
        entry: dict = {"n": int(len(parts[name]))}
        if labels is not None and len(parts[name]):
            pos = int(labels[parts[name]].sum())
            entry.update(
                n_pos=pos, n_neg=int(len(parts[name]) - pos), pos_rate=round(pos / len(parts[name]), 4)
            )
        summary[name] = entry
    return summary


def load_split(split_dir: Path) -> dict[str, np.ndarray]:
    """The train/val/test index arrays that the split stage wrote, by part name."""
    parts = {}
    for name in PARTS:
        path = Path(split_dir) / f"{name}.npy"
        if not path.exists():
            raise LmError(f"{path} not found: run `lm split` first (or `dvc repro`)")
        parts[name] = np.load(path)
    return parts
