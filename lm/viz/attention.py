"""Attention heatmaps: one figure per example, one row per layer, the heads side by side.

Row q of a head's map is how much query token q draws from each key token. Every map shares one colour
scale (and one colour bar), so heads and layers can be compared at a glance: a diffuse head looks pale
everywhere, a sharp one shows a few bright cells. Linear-attention kinds pass their kernel-normalised
equivalent, which may hold small negative values; the scale then starts below zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm.viz._figure import new_figure, save_png, token_label

MAX_FIGURE_INCHES = 28.0  # cap on either side, so 8 heads x 6 layers x 128 tokens stays a sane PNG


def tick_positions(n: int, max_labels: int) -> list[int]:
    """Every position when they fit, else every k-th one (always starting at 0), at most ``max_labels``."""
    if n <= max_labels:
        return list(range(n))
    step = math.ceil(n / max(max_labels, 1))
    return list(range(0, n, step))


def _cell_inches(seq_len: int, n_rows: int, n_cols: int) -> float:
    cell = min(max(1.5 + 0.12 * seq_len, 2.5), 6.0)
    return max(1.2, min(cell, MAX_FIGURE_INCHES / n_cols, MAX_FIGURE_INCHES / n_rows))


FONT_SIZES = (8, 7, 6, 5, 4)  # points; 4 is the smallest still legible in the PNG at its resolution


def _labels_fit(cell: float, fontsize: int) -> int:
    return max(2, int(cell * 72 * 0.75 / (fontsize * 1.4)))  # tick labels that fit along one side of a map


@dataclass(frozen=True)
class LabelLayout:
    cell: float  # inches per map side
    fontsize: int
    ticks: list[int]  # the positions labelled on the axes
    text_beside: bool  # True when not every token fits: the whole text is written under the maps


def label_layout(seq_len: int, n_rows: int, n_cols: int) -> LabelLayout:
    """Every token labelled: the maps grow (up to the figure cap) and the font shrinks (down to 4 pt) until
    all labels fit; beyond that every k-th token is labelled and the numbered text goes beside the maps."""
    cap = max(1.2, min(MAX_FIGURE_INCHES / n_cols, MAX_FIGURE_INCHES / n_rows))
    base = _cell_inches(seq_len, n_rows, n_cols)
    for fontsize in FONT_SIZES:
        need = seq_len * fontsize * 1.4 / (72 * 0.75) + 0.05
        if need <= cap:
            cell = max(base, need)
            return LabelLayout(cell, fontsize, list(range(seq_len)), False)
    fontsize = FONT_SIZES[-1]
    return LabelLayout(cap, fontsize, tick_positions(seq_len, _labels_fit(cap, fontsize)), True)


def numbered_text(tokens: list[str], width: int = 160) -> str:
    """`0:tok 1:tok ...` wrapped to `width` characters: the text beside maps whose axes cannot label every
    token."""
    import textwrap

    return "\n".join(textwrap.wrap("  ".join(f"{i}:{token_label(t)}" for i, t in enumerate(tokens)), width))


def plot_attention(tokens: list[str], attentions: list[np.ndarray], path: str | Path, *, title: str) -> Path:
    """Draw ``attentions`` (one [H, L, L] array per layer, L = len(tokens), real tokens only) to ``path``."""
    seq_len = len(tokens)
    if seq_len == 0 or not attentions:
        raise ValueError("plot_attention needs at least one token and one layer")
    maps = [np.asarray(a, dtype=np.float64) for a in attentions]  # each [H, L, L]
    n_heads = maps[0].shape[0]
    for i, a in enumerate(maps):
        if a.ndim != 3 or a.shape != (n_heads, seq_len, seq_len):
            raise ValueError(
                f"layer {i}: expected attention [H={n_heads}, L={seq_len}, L={seq_len}], got {a.shape}"
            )
    n_layers = len(maps)

    lo = min(0.0, min(float(a.min()) for a in maps))
    hi = max(float(a.max()) for a in maps)
    if hi <= lo:
        hi = lo + 1.0

    layout = label_layout(seq_len, n_layers, n_heads)
    cell, fontsize, ticks = layout.cell, layout.fontsize, layout.ticks
    labels = [token_label(tokens[t]) for t in ticks]
    beside = (
        numbered_text(tokens, width=max(60, int((cell * n_heads + 1.2) * 72 / (fontsize * 0.62))))
        if layout.text_beside
        else ""
    )
    text_inches = (beside.count("\n") + 2) * fontsize * 1.3 / 72 if beside else 0.0

    fig = new_figure(cell * n_heads + 1.2, cell * n_layers + 0.6 + text_inches)
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    image = None
    for layer, a in enumerate(maps):
        for head in range(n_heads):
            ax = axes[layer][head]
            image = ax.imshow(
                a[head], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest", aspect="equal"
            )
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            if layer == n_layers - 1:
                ax.set_xticklabels(labels, rotation=90, fontsize=fontsize, parse_math=False)
            else:
                ax.set_xticklabels([])
            if head == 0:
                ax.set_yticklabels(labels, fontsize=fontsize, parse_math=False)
                ax.set_ylabel(f"layer {layer}  (query)", fontsize=9)
            else:
                ax.set_yticklabels([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if layer == n_layers - 1:
                ax.set_xlabel("key", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(title, parse_math=False)
    if beside:  # the axes label every k-th token: the whole numbered text under the maps
        fig.supxlabel(beside, x=0.01, ha="left", fontsize=fontsize, family="monospace", parse_math=False)
    return save_png(fig, path)
