"""Markdown tables of example predictions for ``reports/predictions.md``.

Cells hold arbitrary corpus text and tokens, so everything is escaped: a ``|`` would split the cell, a
newline would end the row, and ``*``, ``_``, ``<``... would turn into emphasis or HTML. Newlines become
``<br>`` (the only markup we emit inside a cell). Tokens show their spaces as ``␣`` because BPE tokens
usually carry a leading space that would otherwise be invisible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones that change a table cell.
_MARKDOWN_SPECIAL = "\\`*_~[]<>|#&"


def escape_cell(text: str, max_chars: int | None = None) -> str:
    """``text`` as the content of one markdown table cell, shortened to ``max_chars`` with an ellipsis."""
    text = str(text)
    if max_chars is not None and len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    out = "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)
    return out.replace("\r\n", "<br>").replace("\r", "<br>").replace("\n", "<br>")


def escape_token(token: str) -> str:
    """A token in a cell: spaces shown as ``␣``, the empty token as ``∅``, then escaped like any text."""
    if token == "":
        return "\u2205"
    return escape_cell(token.replace(" ", "\u2423"))


def _number(value: Any, digits: int, none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    value = float(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_no examples_\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def masked_predictions_markdown(items: list[dict[str, Any]], *, max_chars: int | None = 300) -> str:
    """Masked-token predictions: ``{"text", "true", "pred", "top5": [(token, prob), ...]}`` per row.

    ``text`` is the context with the masked position already marked by the caller.
    """
    rows = []
    for i, item in enumerate(items, start=1):
        top = ", ".join(f"{escape_token(tok)} ({100 * float(p):.1f}%)" for tok, p in item["top5"])
        hit = "\u2713" if item["pred"] == item["true"] else "\u2717"
        rows.append(
            [
                str(i),
                escape_cell(item["text"], max_chars),
                escape_token(item["true"]),
                escape_token(item["pred"]),
                hit,
                top,
            ]
        )
    return _table(["#", "context", "true", "predicted", "ok", "top-5 (probability)"], rows)


def samples_markdown(items: list[dict[str, Any]], *, max_chars: int | None = 1000) -> str:
    """Generated samples: ``{"prompt", "completion", "temperature", "top_k", "top_p"}`` per row
    (``None`` for a disabled top-k / top-p shows as ``off``)."""
    rows = [
        [
            str(i),
            escape_cell(it["prompt"], max_chars),
            escape_cell(it["completion"], max_chars),
            _number(it["temperature"], 2),
            _number(it["top_k"], 0, "off"),
            _number(it["top_p"], 2, "off"),
        ]
        for i, it in enumerate(items, start=1)
    ]
    return _table(["#", "prompt", "completion", "temperature", "top-k", "top-p"], rows)


def classifier_predictions_markdown(items: list[dict[str, Any]], *, max_chars: int | None = 300) -> str:
    """Classifier outputs: ``{"text", "target", "prob", "label"}`` per row (target = the raw score,
    prob = the model's probability, label = what the caller wants shown, e.g. true/predicted class)."""
    rows = [
        [
            str(i),
            escape_cell(it["text"], max_chars),
            _number(it["target"], 3),
            _number(it["prob"], 3),
            escape_cell(_number(it["label"], 3) if not isinstance(it["label"], str) else it["label"]),
        ]
        for i, it in enumerate(items, start=1)
    ]
    return _table(["#", "text", "target", "probability", "label"], rows)
