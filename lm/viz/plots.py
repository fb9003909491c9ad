"""Static PNG plots for the evaluate and train stages: ROC, precision-recall, calibration, confusion matrix,
training curves.

The JSON rows from :func:`lm.eval.classification.curve_rows` also feed ``dvc plots`` (interactive,
overlaid across experiments); these PNGs are the offline view that renders anywhere, e.g. in a pull
request or in ``dvc plots diff`` without network access.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from lm.errors import LmError
from lm.viz._figure import new_figure, save_png


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=np.float64)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def plot_roc(
    rows: list[dict[str, float]],
    path: str | Path,
    *,
    auc: float | None = None,
    baseline: list[dict[str, float]] | None = None,
    baseline_auc: float | None = None,
) -> Path:
    """ROC curve from ``curve_rows(...)["roc"]`` rows, with the chance diagonal, the baseline's curve when
    given, and the AUCs in the legend."""
    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (0.500)")
    if baseline:
        ax.plot(
            _column(baseline, "fpr"),
            _column(baseline, "tpr"),
            linewidth=1.5,
            color="tab:orange",
            label=f"TF-IDF + LR baseline (AUC {_fmt(baseline_auc)})",
        )
    if rows:
        ax.plot(
            _column(rows, "fpr"),
            _column(rows, "tpr"),
            linewidth=2,
            color="tab:blue",
            label=f"model (AUC {_fmt(auc)})",
        )
    else:
        ax.text(0.5, 0.3, "undefined: one class only", ha="center")
    ax.set(
        xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title="ROC"
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return save_png(fig, path)


def plot_pr(
    rows: list[dict[str, float]],
    path: str | Path,
    *,
    ap: float | None = None,
    prevalence: float | None = None,
    baseline: list[dict[str, float]] | None = None,
    baseline_ap: float | None = None,
) -> Path:
    """Precision-recall curve from ``curve_rows(...)["pr"]`` rows; ``prevalence`` draws the chance level,
    ``baseline`` the baseline's curve."""
    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    if prevalence is not None:
        ax.axhline(prevalence, linestyle="--", color="grey", linewidth=1, label=f"chance ({prevalence:.3f})")
    if baseline:
        ax.step(
            _column(baseline, "recall"),
            _column(baseline, "precision"),
            where="pre",
            linewidth=1.5,
            color="tab:orange",
            label=f"TF-IDF + LR baseline (AP {_fmt(baseline_ap)})",
        )
    if rows:
        # rows run from low to high recall and each precision holds up to its own recall (as in AP)
        ax.step(
            _column(rows, "recall"),
            _column(rows, "precision"),
            where="pre",
            linewidth=2,
            color="tab:blue",
            label=f"model (AP {_fmt(ap)})",
        )
    else:
        ax.text(0.5, 0.5, "undefined: one class only", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return save_png(fig, path)


def plot_calibration(rows: list[dict[str, float]], path: str | Path) -> Path:
    """Reliability diagram from ``curve_rows(...)["calibration"]`` rows: on the diagonal = calibrated."""
    fig = new_figure(5.0, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    if rows:
        ax.plot(
            _column(rows, "mean_predicted"), _column(rows, "fraction_positive"), marker="o", label="model"
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability",
        ylabel="fraction positive",
        title="Calibration",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return save_png(fig, path)


def plot_loss_by_position(rows: list[dict[str, float]], path: str | Path) -> Path:
    """Mean test loss at each position of the window (`lm_statistics(...)["by_position"]`): a decoder's loss
    falls as it sees more context; a flat line means it does not use it."""
    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    if rows:
        ax.plot(_column(rows, "position"), _column(rows, "loss"), marker=".", linewidth=1)
    ax.set(xlabel="position in the window", ylabel="mean loss (nats)", title="Test loss by position")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def confusion_cells(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts [2, 2] (rows = truth, columns = prediction; negative first) and row-normalised percentages
    [2, 2] (NaN for a class with no rows)."""
    truth = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_pred).astype(bool)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of the same length, got {truth.shape} and {pred.shape}"
        )
    counts = confusion_matrix(truth, pred, labels=[False, True])  # [2, 2]
    totals = counts.sum(axis=1, keepdims=True)  # [2, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = np.where(totals > 0, 100.0 * counts / totals, np.nan)
    return counts, pct


def plot_confusion(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    *,
    labels: tuple[str, str] = ("negative", "positive"),
) -> Path:
    """2x2 confusion matrix: each cell shows its count and its share of the true class (row percentage);
    colour follows the row percentage so a rare class reads as clearly as a common one."""
    counts, pct = confusion_cells(y_true, y_pred)
    fig = new_figure(4.8, 4.2)
    ax = fig.subplots()
    image = ax.imshow(np.nan_to_num(pct), cmap="Blues", vmin=0, vmax=100)
    for i in range(2):
        for j in range(2):
            share = "-" if np.isnan(pct[i, j]) else f"{pct[i, j]:.1f}%"
            dark = not np.isnan(pct[i, j]) and pct[i, j] > 60
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n({share})",
                ha="center",
                va="center",
                fontsize=12,
                color="white" if dark else "black",
            )
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (n = {int(counts.sum())})")
    fig.colorbar(image, ax=ax, label="% of true class")
    return save_png(fig, path)


def _series(history: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r["step"]), float(r[key])) for r in history if r.get(key) is not None]
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    if not pts:
        return np.empty(0), np.empty(0)
    steps, values = zip(*pts, strict=True)
    return np.array(steps), np.array(values)


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Train (and validation, where evaluated) loss against optimizer step; learning rate underneath when
    the rows carry ``lr``. Rows: ``{"step", "train_loss", "val_loss"?, "lr"?}``."""
    if not history:
        raise LmError("no training history to plot (did the train stage log any step?)")
    if any("step" not in r for r in history):
        raise LmError("training history: every row needs a 'step'")
    train = _series(history, "train_loss")
    val = _series(history, "val_loss")
    lr = _series(history, "lr")

    has_lr = lr[0].size > 0
    fig = new_figure(7.0, 6.0 if has_lr else 4.2)
    axes = fig.subplots(
        2 if has_lr else 1, 1, sharex=True, squeeze=False, height_ratios=[3, 1] if has_lr else None
    )
    ax = axes[0][0]
    if train[0].size:
        ax.plot(*train, linewidth=1.2, label="train")
    if val[0].size:
        ax.plot(*val, marker="o", markersize=4, linewidth=1.5, label="validation")
    ax.set(ylabel="loss", title="Training curves")
    ax.grid(alpha=0.3)
    if train[0].size or val[0].size:
        ax.legend()
    if has_lr:
        ax_lr = axes[1][0]
        ax_lr.plot(*lr, color="tab:green", linewidth=1.2)
        ax_lr.set(ylabel="learning rate")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.grid(alpha=0.3)
    axes[-1][0].set_xlabel("step")
    return save_png(fig, path)
