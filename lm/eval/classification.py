"""Binary classification metrics and curves for the toxicity classifier.

Everything is computed with scikit-learn, so the numbers mean exactly what its documentation says. The
target is a score in [0, 1] (the fraction of annotators who judged a comment toxic); a row is positive when
``score >= threshold`` and predicted positive when ``prob >= threshold``. A split that holds a single class
(tiny corpora, a rare label) has no ROC/PR curve: the AUCs come back as ``None`` instead of crashing the
evaluate stage.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from lm.errors import LmError

MAX_CURVE_POINTS = 200


def _as_1d(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise LmError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise LmError(f"{name}: no rows to evaluate (the split is empty; check split.test_fraction)")
    return arr


def _check_probs(y_prob: Any, n: int) -> np.ndarray:
    prob = _as_1d(y_prob, "y_prob").astype(np.float64)
    if prob.shape[0] != n:
        raise LmError(f"y_prob: {prob.shape[0]} values for {n} labels (predictions and labels must align)")
    if not np.all(np.isfinite(prob)) or prob.min() < 0.0 or prob.max() > 1.0:
        raise LmError("y_prob: probabilities must be finite and in [0, 1] (apply a sigmoid to the logits)")
    return prob


def classification_report(y_score: np.ndarray, y_prob: np.ndarray, *, threshold: float) -> dict[str, Any]:
    """Headline metrics for one split.

    ``y_score`` is the raw target in [0, 1]; ``y_true = y_score >= threshold``. Precision, recall, F1 and
    accuracy use the same threshold on ``y_prob``. Returns plain Python numbers (JSON-ready); ``roc_auc``
    and ``pr_auc`` (average precision) are ``None`` when only one class is present.

    >>> rep = classification_report(np.array([0.9, 0.1]), np.array([0.8, 0.3]), threshold=0.5)
    >>> rep["roc_auc"], rep["accuracy"], rep["n_pos"]
    (1.0, 1.0, 1)
    """
    if not 0.0 < threshold < 1.0:
        raise LmError(f"threshold must be in (0, 1), got {threshold} (set eval.threshold or data.threshold)")
    score = _as_1d(y_score, "y_score").astype(np.float64)
    if not np.all(np.isfinite(score)):
        raise LmError("y_score: target scores must be finite (drop or fill NaN targets before evaluating)")
    prob = _check_probs(y_prob, score.shape[0])

    y_true = score >= threshold  # bool [N]
    y_pred = prob >= threshold  # bool [N]
    n_pos = int(y_true.sum())
    both_classes = 0 < n_pos < y_true.size

    return {
        "roc_auc": float(roc_auc_score(y_true, prob)) if both_classes else None,
        "pr_auc": float(average_precision_score(y_true, prob)) if both_classes else None,
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(f1_score(y_true, y_pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n": int(y_true.size),
        "n_pos": n_pos,
        "brier": float(brier_score_loss(y_true, prob, pos_label=True)),
        "log_loss": float(log_loss(y_true, prob, labels=[False, True])),
    }


def thin_indices(x: np.ndarray, y: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly along the curve's length.

    Sampling by arc length (not by index) keeps the shape: long straight runs get few points, the bends
    where the curve turns get their share, and the first and last points are always kept. A curve that
    already fits is returned whole.
    """
    n = len(x)
    if n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError("max_points must be >= 2 to keep both ends of a curve")
    seg = np.hypot(np.diff(x), np.diff(y))  # [n-1]
    dist = np.concatenate([[0.0], np.cumsum(seg)])  # [n]
    if dist[-1] == 0.0:
        return np.array([0, n - 1])
    targets = np.linspace(0.0, dist[-1], max_points)
    idx = np.searchsorted(dist, targets, side="left").clip(0, n - 1)
    idx[0], idx[-1] = 0, n - 1
    return np.unique(idx)


def _finite_threshold(t: float) -> float:
    # roc_curve's first threshold is +inf ("predict nothing positive"); JSON has no inf, and any value
    # above every probability means the same, so 1.0 stands in for it.
    return 1.0 if not math.isfinite(t) else float(min(t, 1.0))


def curve_rows(
    y_true: np.ndarray, y_prob: np.ndarray, *, max_points: int = MAX_CURVE_POINTS, n_bins: int = 10
) -> dict[str, list[dict[str, float]]]:
    """ROC, precision-recall and calibration curves as lists of rows, ready for JSON and ``dvc plots``.

    Curves are thinned to at most ``max_points`` rows each (see :func:`thin_indices`). ROC and PR rows are
    empty when only one class is present (the curves are undefined); calibration uses ``n_bins`` uniform
    bins and leaves out empty ones.
    """
    truth = _as_1d(y_true, "y_true")
    if truth.dtype != bool:
        if not np.isin(truth, (0, 1)).all():
            raise LmError("y_true: expected boolean labels (threshold the target scores first)")
        truth = truth.astype(bool)
    prob = _check_probs(y_prob, truth.shape[0])
    n_pos = int(truth.sum())

    roc: list[dict[str, float]] = []
    pr: list[dict[str, float]] = []
    if 0 < n_pos < truth.size:
        fpr, tpr, thr = roc_curve(truth, prob, drop_intermediate=True)
        keep = thin_indices(fpr, tpr, max_points)
        roc = [
            {"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": _finite_threshold(thr[i])} for i in keep
        ]

        precision, recall, _ = precision_recall_curve(truth, prob, drop_intermediate=True)
        precision, recall = (
            precision[::-1],
            recall[::-1],
        )  # sklearn lists recall high -> low; plot low -> high
        keep = thin_indices(recall, precision, max_points)
        pr = [{"recall": float(recall[i]), "precision": float(precision[i])} for i in keep]

    frac_pos, mean_pred = calibration_curve(truth, prob, n_bins=n_bins, strategy="uniform")
    calibration = [
        {"mean_predicted": float(m), "fraction_positive": float(f)}
        for m, f in zip(mean_pred, frac_pos, strict=True)
    ]
    return {"roc": roc, "pr": pr, "calibration": calibration}
