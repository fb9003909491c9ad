"""The body of `lm compare`: read the runs, keep the ones asked for, check that there is something to
compare, build the table, write the markdown / HTML files and return the text to print."""

from __future__ import annotations

from pathlib import Path

from lm.compare.runs import read_runs, select
from lm.compare.table import WIDTH, build_table, to_text
from lm.errors import LmError


def compare(
    names: list[str] | None = None,
    *,
    all_commits: bool = False,
    num: int = 1,
    keys: list[str] | None = None,
    aggregate: bool = True,
    md: Path | None = None,
    html: Path | None = None,
    width: int = WIDTH,
    cwd: str | Path = ".",
) -> str:
    """The table of the workspace, the last `num` commits (all with `all_commits`) and their experiments, or
    of the runs called `names`; `keys` fixes the param columns."""
    runs = read_runs(all_commits=all_commits, num=num, cwd=cwd)
    if runs.empty:
        raise LmError(
            "this repository has no commit yet: commit the project, then `dvc exp run -S key=value`"
        )
    if names:
        runs = select(runs, names)
    elif not (runs["run", "kind"] == "experiment").any() and (runs["run", "kind"] == "commit").sum() < 2:
        raise LmError(
            "no experiments to compare: run some first, e.g. `dvc exp run -S model.n_layers=6` "
            "(or compare commits with --num 2)"
        )
    table = build_table(runs, keys=keys, aggregate=aggregate, width=width)
    wrote = []
    if md is not None:
        from lm.compare.report import write_markdown

        write_markdown(table, md)
        wrote.append(f"wrote {md}")
    if html is not None:
        from lm.compare.report import write_html

        write_html(table, runs, html, cwd)
        wrote.append(f"wrote {html}")
    return to_text(table, width) + "".join(line + "\n" for line in wrote)
