"""Unintended-bias metrics, as defined by the Jigsaw Unintended Bias in Toxicity Classification competition.

A model can reach a high overall AUC while still scoring harmless comments that *mention* an identity
("I am a gay man") as more toxic than harmless comments that do not. The competition measured this with
three AUCs per identity subgroup (rows whose identity column is >= ``identity_threshold``; NaN means the
row was not annotated, so it is not in the subgroup):

- subgroup AUC: only rows in the subgroup; low means the model cannot rank within the subgroup;
- BPSN AUC (background positive, subgroup negative): low means non-toxic subgroup rows score above toxic
  background rows (false positives driven by the identity mention);
- BNSP AUC (background negative, subgroup positive): low means toxic subgroup rows score below non-toxic
  background rows.

Each is summarised over identities by the generalized power mean ``M_p = (mean(m_i ** p)) ** (1 / p)``
with ``p = -5``, which leans towards the worst subgroup, and the final score is
``w * overall_auc + w * (M_subgroup + M_bpsn + M_bnsp)`` with ``w = 0.25``.
Reference: https://www.kaggle.com/c/jigsaw-unintended-bias-in-toxicity-classification/overview/evaluation
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from lm.errors import LmError

METRICS = ("subgroup_auc", "bpsn_auc", "bnsp_auc")


def power_mean(values: list[float], p: float) -> float | None:
    """Generalized mean ``(mean(v ** p)) ** (1 / p)``; ``None`` for no values.

    For negative ``p`` a zero value drives the mean to its limit, 0 (the worst subgroup dominates).
    """
    if not values:
        return None
    if p == 0:
        raise ValueError("power mean with p = 0 (the geometric mean) is not the Jigsaw definition")
    arr = np.asarray(values, dtype=np.float64)
    if p < 0 and np.any(arr == 0.0):
        return 0.0
    return float(np.mean(arr**p) ** (1.0 / p))


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """ROC AUC, or ``None`` when the rows do not hold both classes."""
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        return None
    return float(roc_auc_score(labels, probs))


def _binary_labels(column: pd.Series, name: str) -> np.ndarray:
    values = column.to_numpy()
    if values.dtype == bool:
        return values
    if column.isna().any() or not np.isin(values, (0, 1)).all():
        raise LmError(f"column {name!r}: expected boolean labels (threshold the target scores first)")
    return values.astype(bool)


def _identity_values(column: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    if values.notna().sum() != column.notna().sum():
        raise LmError(f"identity column {name!r}: expected numbers in [0, 1] or empty cells, found text")
    return values.to_numpy(dtype=np.float64)


def bias_report(
    df: pd.DataFrame,
    identities: list[str],
    y_true_col: str,
    y_prob_col: str,
    *,
    overall_auc: float | None,
    identity_threshold: float = 0.5,
    power: float = -5,
    weight: float = 0.25,
    min_size: int = 10,
) -> dict[str, Any]:
    """Per-identity subgroup/BPSN/BNSP AUCs, their power means and the Jigsaw final score.

    Identities with fewer than ``min_size`` subgroup rows, or whose subgroup holds one class only, are
    listed with ``None`` AUCs and left out of the means. An AUC whose rows hold one class (e.g. BPSN when
    the background has no positives) is ``None`` and left out of that metric's mean. ``final_score`` is
    ``None`` when ``overall_auc`` or any power mean is undefined.
    """
    needed = [y_true_col, y_prob_col, *identities]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise LmError(
            f"bias metrics: column(s) {missing} not in the evaluation frame (check data.identity_columns)"
        )

    y = _binary_labels(df[y_true_col], y_true_col)  # bool [N]
    prob = df[y_prob_col].to_numpy(dtype=np.float64)  # [N]
    if not np.all(np.isfinite(prob)):
        raise LmError(f"column {y_prob_col!r}: probabilities must be finite")

    per_identity: dict[str, dict[str, Any]] = {}
    collected: dict[str, list[float]] = {m: [] for m in METRICS}
    for ident in identities:
        values = _identity_values(df[ident], ident)  # float [N], NaN = not annotated
        subgroup = values >= identity_threshold  # NaN compares False: not annotated = not in the subgroup
        size = int(subgroup.sum())
        entry: dict[str, Any] = {"size": size, **{m: None for m in METRICS}}
        per_identity[ident] = entry
        if size < min_size or _auc(y[subgroup], prob[subgroup]) is None:
            continue
        background = ~subgroup
        masks = {
            "subgroup_auc": subgroup,
            "bpsn_auc": (background & y) | (subgroup & ~y),
            "bnsp_auc": (background & ~y) | (subgroup & y),
        }
        for metric, mask in masks.items():
            entry[metric] = _auc(y[mask], prob[mask])
            if entry[metric] is not None:
                collected[metric].append(entry[metric])

    means = {m: power_mean(collected[m], power) for m in METRICS}
    if overall_auc is None or any(v is None for v in means.values()):
        final = None
    else:
        final = float(weight * overall_auc + weight * sum(means.values()))
    return {"per_identity": per_identity, "power_mean": means, "final_score": final}
