"""Figure creation and atomic PNG writing shared by the plotting modules.

Figures are built on matplotlib's object API with an explicit Agg canvas rather than through pyplot: no
display backend is ever touched (the stages run headless), nothing is registered in pyplot's global figure
list, so nothing leaks when a plot fails halfway, and the figure is dropped when the function returns.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches drawn by the Agg (PNG) renderer."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; reports are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        fig.clear()
    return path


def token_label(token: str) -> str:
    """A token as a tick label: spaces, newlines and tabs made visible (BPE tokens often start with a
    space), the empty string shown as such. Pass ``parse_math=False`` with it so ``$`` stays literal."""
    if token == "":
        return "\u2205"  # empty set
    return token.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\r", "\\r").replace("\t", "\\t")
