"""Plots write valid PNGs atomically without leaking figures; markdown tables escape their cells."""

from __future__ import annotations

import re

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from lm.eval.classification import curve_rows
from lm.viz.attention import plot_attention, tick_positions
from lm.viz.plots import (
    confusion_cells,
    plot_calibration,
    plot_confusion,
    plot_pr,
    plot_roc,
    plot_training_curves,
)
from lm.viz.predictions import (
    classifier_predictions_markdown,
    escape_cell,
    masked_predictions_markdown,
    samples_markdown,
)


def _png(path) -> np.ndarray:
    """Read back a written PNG: it must exist, be non-empty and decode to an RGBA image."""
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, unlike a bare mkstemp file
    img = mpimg.imread(path)  # [H, W, 4] floats in [0, 1]
    assert img.ndim == 3 and img.shape[2] == 4 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # something was drawn, not a blank canvas
    return img


def _only(tmp_path, *names):
    """The folder holds exactly these files: no temp files left behind, no figures left open."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert plt.get_fignums() == []


def _softmax_maps(rng, heads, length):
    x = rng.normal(size=(heads, length, length)) * 2
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)  # [H, L, L], rows sum to 1


def test_plot_attention_grid_layout(tmp_path):
    rng = np.random.default_rng(0)
    tokens = ["<|cls|>", " the", " cost", " is", " $5", "\n", "$x$", ""]  # $ must stay literal
    one = plot_attention(tokens, [_softmax_maps(rng, 4, 8)], tmp_path / "one.png", title="1 layer: $ok$ | x")
    three = plot_attention(
        tokens, [_softmax_maps(rng, 4, 8) for _ in range(3)], tmp_path / "three.png", title="t"
    )
    img1, img3 = _png(one), _png(three)
    assert img1.shape[1] > img1.shape[0]  # 4 heads side by side in one row: wide
    assert img3.shape[0] > 2 * img1.shape[0]  # one row per layer
    assert img3.shape[1] == img1.shape[1]  # same number of heads, same width
    _only(tmp_path, "one.png", "three.png")


def test_plot_attention_long_sequence_thins_labels(tmp_path):
    rng = np.random.default_rng(1)
    length = 150
    path = plot_attention(
        [f"t{i}" for i in range(length)],
        [_softmax_maps(rng, 2, length)] * 2,
        tmp_path / "sub" / "long.png",
        title="long",
    )
    _png(path)  # parent folder created on demand
    ticks = tick_positions(length, 40)
    assert ticks[0] == 0 and len(ticks) <= 40 and len(set(np.diff(ticks))) == 1
    assert tick_positions(10, 40) == list(range(10))


def test_attention_maps_label_every_token_or_write_the_text_beside(tmp_path):
    """The default run's maps (64 tokens, 2 layers x 4 heads) label every token; a map too long for the figure
    labels every k-th one and writes the numbered text under the maps, so no token goes unnamed."""
    from lm.viz.attention import label_layout, numbered_text

    for length, rows, cols in ((8, 1, 4), (64, 2, 4), (32, 6, 8)):
        layout = label_layout(length, rows, cols)
        assert layout.ticks == list(range(length)) and not layout.text_beside, (length, rows, cols)
        assert layout.fontsize >= 4 and layout.cell * cols <= 28.0
    assert label_layout(8, 1, 4).fontsize == 8  # short texts keep the large font
    long = label_layout(600, 2, 4)
    assert long.text_beside and long.ticks[0] == 0 and len(long.ticks) < 600
    assert numbered_text(["<|cls|>", " the", "\n"]) == "0:<|cls|>  1:\u2423the  2:\u21b5"
    rng = np.random.default_rng(2)
    path = plot_attention(
        [f"t{i}" for i in range(600)], [_softmax_maps(rng, 2, 600)] * 2, tmp_path / "x.png", title="t"
    )
    _png(path)


def test_plot_attention_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="expected attention"):
        plot_attention(["a", "b", "c"], [np.ones((2, 4, 4))], tmp_path / "x.png", title="bad")
    _only(tmp_path)


def test_curve_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(2)
    y_true = rng.random(500) < 0.3
    y_prob = np.clip(0.3 * y_true + 0.7 * rng.random(500), 0, 1)
    curves = curve_rows(y_true, y_prob)
    _png(plot_roc(curves["roc"], tmp_path / "roc.png", auc=0.81))
    _png(plot_pr(curves["pr"], tmp_path / "pr.png", ap=0.6, prevalence=float(y_true.mean())))
    _png(plot_calibration(curves["calibration"], tmp_path / "calibration.png"))
    _png(plot_roc([], tmp_path / "roc_one_class.png", auc=None))  # one class: drawn, not a crash
    _only(tmp_path, "roc.png", "pr.png", "calibration.png", "roc_one_class.png")


def test_confusion_cells_match_sklearn_and_plot(tmp_path):
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.random(200) < 0.2, rng.random(200) < 0.4
    counts, pct = confusion_cells(y_true, y_pred)
    expected = confusion_matrix(y_true, y_pred, labels=[False, True])
    assert np.array_equal(counts, expected)
    assert np.allclose(pct, 100 * expected / expected.sum(axis=1, keepdims=True))
    # hand-checkable: 3 negatives (2 right), 1 positive (missed)
    counts, pct = confusion_cells(np.array([0, 0, 0, 1]), np.array([0, 1, 0, 0]))
    assert counts.tolist() == [[2, 1], [1, 0]]
    assert np.allclose(pct, [[200 / 3, 100 / 3], [100.0, 0.0]])
    counts, pct = confusion_cells(np.zeros(5, bool), np.zeros(5, bool))  # no positives: that row is NaN
    assert counts.tolist() == [[5, 0], [0, 0]] and np.isnan(pct[1]).all()
    _png(plot_confusion(y_true, y_pred, tmp_path / "confusion.png", labels=("non-toxic", "toxic")))
    _png(plot_confusion(np.zeros(5, bool), np.zeros(5, bool), tmp_path / "confusion_one.png"))
    _only(tmp_path, "confusion.png", "confusion_one.png")


def test_training_curves(tmp_path):
    history = [
        {"step": s, "train_loss": 3.0 / (1 + 0.1 * s), "lr": 1e-3 * min(1, s / 10)} for s in range(1, 60)
    ]
    for row in history[9::10]:
        row["val_loss"] = row["train_loss"] + 0.1
    history[5]["val_loss"] = None  # an eval that was not run
    with_lr = _png(plot_training_curves(history, tmp_path / "with_lr.png"))
    no_lr = _png(
        plot_training_curves(
            [{k: v for k, v in r.items() if k != "lr"} for r in history], tmp_path / "no_lr.png"
        )
    )
    assert with_lr.shape[0] > no_lr.shape[0]  # the learning-rate panel adds height
    with pytest.raises(Exception, match="no training history"):
        plot_training_curves([], tmp_path / "empty.png")
    _only(tmp_path, "with_lr.png", "no_lr.png")


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "roc.png"
    target.write_bytes(b"old")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_roc(
            [{"fpr": 0.0, "tpr": 0.0, "threshold": 1.0}, {"fpr": 1.0, "tpr": 1.0, "threshold": 0.0}],
            target,
            auc=0.5,
        )
    assert target.read_bytes() == b"old"  # the previous output survives a failed write
    _only(tmp_path, "roc.png")


# ---------------------------------------------------------------- markdown


def _cells(line: str) -> list[str]:
    """Split a markdown table row on unescaped pipes."""
    assert line.startswith("| ") and line.endswith(" |")
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def test_escape_cell():
    assert escape_cell("a|b\nc") == "a\\|b<br>c"
    assert escape_cell("x\r\ny") == "x<br>y"
    assert escape_cell("<|endoftext|> *bold* _it_ `code` [l](u) back\\slash") == (
        "\\<\\|endoftext\\|\\> \\*bold\\* \\_it\\_ \\`code\\` \\[l\\](u) back\\\\slash"
    )
    assert escape_cell("abcdefghij", max_chars=5) == "abcd\u2026"


def test_masked_predictions_markdown():
    items = [
        {
            "text": "the cat | sat\non the <|mask|>",
            "true": " mat",
            "pred": " mat",
            "top5": [(" mat", 0.5), (" floor", 0.25), ("|", 0.1), ("", 0.05), ("\n", 0.01)],
        },
        {"text": "a b", "true": "c", "pred": "d", "top5": [("d", 0.9)]},
    ]
    md = masked_predictions_markdown(items)
    lines = md.strip().split("\n")
    assert len(lines) == 2 + len(items)  # header, rule, one line per item: no newline escaped the table
    widths = {len(_cells(line)) for line in [lines[0], *lines[2:]]}
    assert widths == {6}  # no pipe split a cell
    first = _cells(lines[2])
    assert first[1] == "the cat \\| sat<br>on the \\<\\|mask\\|\\>"
    assert first[2] == "\u2423mat" and first[4] == "\u2713"
    assert first[5].startswith("\u2423mat (50.0%), \u2423floor (25.0%), \\| (10.0%), \u2205 (5.0%)")
    assert _cells(lines[3])[4] == "\u2717"


def test_samples_and_classifier_markdown():
    md = samples_markdown(
        [
            {
                "prompt": "Once",
                "completion": " upon | a\ntime",
                "temperature": 0.8,
                "top_k": 40,
                "top_p": None,
            },
        ]
    )
    lines = md.strip().split("\n")
    assert _cells(lines[2]) == ["1", "Once", "upon \\| a<br>time", "0.80", "40", "off"]

    md = classifier_predictions_markdown(
        [
            {"text": "you are *awful*", "target": 0.8, "prob": 0.91234, "label": True},
            {"text": "nice", "target": 0.0, "prob": 0.1, "label": "non-toxic"},
        ]
    )
    lines = md.strip().split("\n")
    assert _cells(lines[2]) == ["1", "you are \\*awful\\*", "0.800", "0.912", "true"]
    assert _cells(lines[3]) == ["2", "nice", "0.000", "0.100", "non-toxic"]
    assert masked_predictions_markdown([]) == "_no examples_\n"
