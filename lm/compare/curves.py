"""The curves of each run, read at the run's revision, drawn overlaid as inline SVG: ROC and precision-recall
of the classify runs, and the training (solid) and validation (dashed) loss on one axis per task, since a
classifier's loss and a language model's are on different scales.

The files are git-tracked (`cache: false` in dvc.yaml), so a commit's or an experiment's copy is `git show
REV:path`; the workspace's is the file on disk. SVG keeps the legend as text and needs no network.
"""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from lm.paths import PLOTS, TRAIN_REPORTS

ROC = PLOTS / "roc.json"  # rows {fpr, tpr, threshold} (dvc.yaml plots: ROC)
PR = PLOTS / "pr.json"  # rows {recall, precision}
LOSS = TRAIN_REPORTS / "plots" / "metrics"  # dvclive's step-by-step TSVs: step, train_loss / val_loss
MAX_POINTS = 400  # points per drawn line: a loss logged every step is thinned to this


@dataclass
class RunCurves:
    """One run's curves as frames with the files' columns (fpr/tpr, recall/precision, step/value)."""

    name: str
    task: str
    roc: pd.DataFrame  # empty when the run has no such curve
    pr: pd.DataFrame
    train_loss: pd.DataFrame
    val_loss: pd.DataFrame


def read_at(rev: str, path: Path, cwd: str | Path = ".") -> str | None:
    """A git-tracked report as it is at `rev` (`workspace`: on disk); None when it is not there."""
    if rev == "workspace":
        file = Path(cwd) / path
        return file.read_text() if file.is_file() else None
    proc = subprocess.run(
        ["git", "show", f"{rev}:./{path.as_posix()}"], cwd=cwd, capture_output=True, text=True, check=False
    )
    return proc.stdout if proc.returncode == 0 else None


def read_curves(runs: pd.DataFrame, cwd: str | Path = ".") -> list[RunCurves]:
    """The curves of every run that has results (rows of lm.compare.runs' frame)."""
    out = []
    for _, run in runs[runs["run", "state"] == "done"].iterrows():
        rev = run["run", "rev"]
        task = run.get(("param", "task"))
        out.append(
            RunCurves(
                name=str(run["run", "name"]),
                task=task if isinstance(task, str) else "classify",  # lm's default
                roc=_json_rows(read_at(rev, ROC, cwd)),
                pr=_json_rows(read_at(rev, PR, cwd)),
                train_loss=_tsv(read_at(rev, LOSS / "train_loss.tsv", cwd)),
                val_loss=_tsv(read_at(rev, LOSS / "val_loss.tsv", cwd)),
            )
        )
    return out


def figures(curves: list[RunCurves]) -> list[tuple[str, str]]:
    """(title, inline SVG) of each plot that some run has data for; a run keeps its colour in all of them."""
    colours = {
        c.name: f"C{n % 10}" if len(curves) <= 10 else matplotlib.colormaps["tab20"](n % 20)
        for n, c in enumerate(curves)
    }
    out = []
    for title, column, (x, y) in (
        ("ROC", "roc", ("fpr", "tpr")),
        ("Precision-recall", "pr", ("recall", "precision")),
    ):
        drawn = [c for c in curves if {x, y} <= set(getattr(c, column).columns)]
        if drawn:
            fig, ax = _axes(title, x, y)
            if column == "roc":
                ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)  # chance
            for c in drawn:
                rows = getattr(c, column)
                ax.plot(rows[x], rows[y], color=colours[c.name], linewidth=1.5, label=c.name)
            out.append((title, _svg(fig, ax, len(out))))
    for task in dict.fromkeys(c.task for c in curves):
        drawn = [c for c in curves if c.task == task and not (c.train_loss.empty and c.val_loss.empty)]
        if drawn:
            title = f"Loss, task {task} (solid: train, dashed: validation)"
            fig, ax = _axes(title, "step", "loss")
            for c in drawn:
                label = c.name  # one legend entry per run, on its first line
                for frame, style in ((c.train_loss, "-"), (c.val_loss, "--")):
                    if not frame.empty:
                        ax.plot(
                            frame["step"],
                            frame.iloc[:, 1],
                            style,
                            color=colours[c.name],
                            linewidth=1.2,
                            label=label,
                        )
                        label = None
            out.append((title, _svg(fig, ax, len(out))))
    return out


def _axes(title: str, x: str, y: str):
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.set(title=title, xlabel=x, ylabel=y)
    ax.grid(alpha=0.3)
    return fig, ax


def _svg(fig: Figure, ax, n: int) -> str:
    """The figure as an <svg> element: text kept as text, no XML prolog or metadata, ids salted per figure
    so that several SVGs in one page do not share clip paths."""
    ax.legend(fontsize=8)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"lm-compare-{n}"}):
        fig.savefig(
            buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
        )
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _json_rows(text: str | None) -> pd.DataFrame:
    try:
        rows = json.loads(text) if text else []
    except json.JSONDecodeError:
        rows = []
    return pd.DataFrame(rows if isinstance(rows, list) else [])


def _tsv(text: str | None) -> pd.DataFrame:
    """step and value columns of a dvclive TSV, thinned to MAX_POINTS rows (the last row kept)."""
    if not text:
        return pd.DataFrame()
    frame = pd.read_csv(io.StringIO(text), sep="\t")
    values = [c for c in frame.columns if c not in ("step", "timestamp")]
    if "step" not in frame.columns or not values or frame.empty:
        return pd.DataFrame()
    frame = frame[["step", values[0]]]
    stride = max(1, -(-len(frame) // MAX_POINTS))
    return pd.concat([frame.iloc[::stride], frame.iloc[[-1]]]).drop_duplicates("step")
