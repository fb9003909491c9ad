"""The classifier's two class names, and the one rule that turns a score into one of them.

`data.label_names` names them ([negative, positive]); `auto` means non-toxic / toxic for the embedded
toxicity corpus and negative / positive for any other data, so a movie-review or spam classifier never
reports "toxic". The names travel with the exported model (config.json), so `lm predict` and `lm serve`
label as the run was configured; a model exported before names existed was a toxicity classifier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TOXICITY_NAMES = ("non-toxic", "toxic")  # the embedded corpus (and models exported without names)
GENERIC_NAMES = ("negative", "positive")


def auto_label_names(source: str) -> list[str]:
    return list(TOXICITY_NAMES if source.strip() == "embedded" else GENERIC_NAMES)


def decision_of(config: Mapping[str, Any]) -> tuple[float, list[str]]:
    """The threshold and class names an exported classifier's config.json records (a model exported before
    they were recorded: 0.5 and the toxicity names)."""
    return float(config.get("threshold", 0.5)), list(config.get("label_names", TOXICITY_NAMES))


def label_of(score: float, threshold: float, names: Sequence[str]) -> str:
    """names[1] when score >= threshold, else names[0]; "" for a missing score (NaN: a text left unscored)."""
    if score != score:  # NaN
        return ""
    return names[1] if score >= threshold else names[0]


def labels_of(scores: Iterable[float], threshold: float, names: Sequence[str]) -> list[str]:
    return [label_of(float(s), threshold, names) for s in scores]
