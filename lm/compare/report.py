"""`lm compare --md / --html`: the table as markdown (for a pull request or a results page), or one
self-contained HTML page with the table and the overlaid curves: inline CSS and inline SVG, no script and no
address to fetch, so it opens offline and can be mailed as one file. Both are written atomically.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from lm.compare.curves import figures, read_curves
from lm.compare.table import Table
from lm.io import atomic_write_text

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.runs { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 0.9em; }
table.runs th, table.runs td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
table.runs th:first-child, table.runs td:first-child { text-align: left; }
table.runs thead th { border-bottom: 2px solid #888; }
ul.notes { color: #555; font-size: 0.9em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure svg { width: 36em; height: auto; }
"""


def markdown(table: Table) -> str:
    """A pipe table (cells as shown in the terminal, full param keys as headers) and the notes as a list."""
    cells = table.cells.map(lambda text: text.replace("|", r"\|"))
    align = ["left" if c == "run" or c in table.params else "right" for c in cells.columns]
    text = cells.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"
    return text + "".join(f"\n- {note}" for note in table.notes) + ("\n" if table.notes else "")


def html(table: Table, plots: list[tuple[str, str]]) -> str:
    """The page: the table, its notes, then one inline SVG per plot."""
    rows = table.cells.to_html(index=False, classes="runs", escape=True)
    notes = "".join(f"<li>{escape(note)}</li>" for note in table.notes)
    shown = "".join(f'<figure aria-label="{escape(title)}">{svg}</figure>' for title, svg in plots)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>lm compare</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>Experiments</h1>\n{rows}\n"
        f'<ul class="notes">{notes}</ul>\n<h2>Curves</h2>\n<div class="figures">{shown}</div>\n'
        "</body>\n</html>\n"
    )


def write_markdown(table: Table, path: str | Path) -> None:
    atomic_write_text(path, markdown(table))


def write_html(table: Table, runs: pd.DataFrame, path: str | Path, cwd: str | Path = ".") -> None:
    """The page for `table`, with the curves of `runs` (every run of the table, one line each)."""
    atomic_write_text(path, html(table, figures(read_curves(runs, cwd))))
