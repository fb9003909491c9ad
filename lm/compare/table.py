"""The comparison table: a row per run (or per seed sweep), the params that differ between the rows, the
headline metrics beside the baseline's, and what training cost.

`dvc exp show` has a column for every param and dependency (~200); a reader wants the few that changed. A
sweep over `seed` alone is one row with mean±std, so a difference between two models can be read against
the spread between seeds. The text form keeps to `width` columns: params that do not fit are named in a
note, and `--keys` picks them instead.

>>> number(0.95213), number(0.0183, signed=True), number(1234567.0), number(45.678)
('0.9521', '+0.0183', '1.23M', '45.68')
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from lm.errors import LmError

# reports/metrics.json: classify (roc/pr AUC, the TF-IDF baseline's, the lift) and mlm/clm (perplexity and the
# n-gram baseline's); reports/train/metrics.json: what the run cost. A column shows when some row has it.
HEADLINE = ("roc_auc", "pr_auc", "baseline.roc_auc", "lift.roc_auc", "perplexity", "baseline.perplexity")
COST = ("seconds", "tokens_per_s", "peak_memory_mb", "n_params")
WIDTH = 160
MAX_CELL = 18  # longest param value shown: paths keep their file name, the rest is cut with …


@dataclass
class Table:
    cells: pd.DataFrame  # display strings; columns: run, n (when a row is a sweep), params, metrics, cost
    params: list[str]  # the param columns (dotted keys of params.yaml)
    notes: list[str] = field(default_factory=list)  # lines printed under the table


def build_table(
    runs: pd.DataFrame, keys: list[str] | None = None, aggregate: bool = True, width: int = WIDTH
) -> Table:
    """The table of `runs` (from lm.compare.runs): param columns `keys`, or those that differ and fit in
    `width`; seed sweeps as one row unless `aggregate` is false."""
    done = runs[runs["run", "state"] == "done"].reset_index(drop=True)
    notes = [
        f"no results (left out): {r['run', 'name']} ({r['run', 'state']})"
        for _, r in runs[runs["run", "state"] != "done"].iterrows()
    ]
    if done.empty:
        raise LmError("no run has results yet: run `dvc repro` or `dvc exp run` first")
    groups = seed_groups(done) if aggregate else [[i] for i in done.index]
    base = pd.DataFrame({"run": [_label(done, g) for g in groups]})
    if any(len(g) > 1 for g in groups):
        base["n"] = [str(len(g)) for g in groups]
        notes += [
            f"{_label(done, g)}: mean±std over {', '.join(done.loc[g, ('run', 'name')])} "
            f"(seed {_seeds(done, g)})"
            for g in groups
            if len(g) > 1
        ]
    figures = pd.DataFrame(
        {key: [_stat(done.loc[g, column], key) for g in groups] for column, key in _figures(done)}
    )
    candidates = keys if keys is not None else sorted(changed_params(done), key=_importance)
    params = pd.DataFrame(
        {key: [_param_cell(done, g, key) for g in groups] for key in _check_keys(done, candidates)}
    )
    chosen = list(params.columns)
    if keys is None:
        chosen, left_out = _fit(base, params, figures, width)
        if left_out:
            notes.append(
                f"left out to fit {width} columns: {', '.join(left_out)} (choose the param columns "
                f"with --keys KEY,KEY,...)"
            )
    return Table(pd.concat([base, params[chosen], figures], axis=1), chosen, notes)


# which changed params get a column first when not all fit: what defines the model and its training, then
# the data; seed last (the n column and the notes cover sweeps)
SECTIONS = ("task", "model", "train", "finetune", "tokenizer", "pretrain", "encode", "split", "data")


def _importance(key: str) -> int:
    if key == "seed":
        return len(SECTIONS) + 1
    section = key.split(".", 1)[0]
    return SECTIONS.index(section) if section in SECTIONS else len(SECTIONS)


def changed_params(runs: pd.DataFrame) -> list[str]:
    """The params whose value (or presence) is not the same in every run, in params.yaml order."""
    params = _params(runs)
    return [key for key in params.columns if params[key].map(_identity).nunique() > 1]


def seed_groups(runs: pd.DataFrame) -> list[list[int]]:
    """Rows of the table as lists of run positions: runs whose params differ only in `seed` form one row.
    A run whose seed is already in its sweep (the workspace left as the last experiment) stays on its own."""
    params = _params(runs)
    others = [k for k in params.columns if k != "seed"]
    setting = (
        params[others].map(_identity).agg("|".join, axis=1) if others else pd.Series("", index=runs.index)
    )
    seeds = params["seed"] if "seed" in params else pd.Series(math.nan, index=runs.index)
    seed = seeds.map(_identity)
    workspace_last = sorted(runs.index, key=lambda i: runs.loc[i, ("run", "kind")] == "workspace")
    sweeps: dict[str, list[int]] = {}
    for i in workspace_last:
        members = sweeps.setdefault(setting[i], [])
        if all(seed[j] != seed[i] for j in members):
            members.append(i)
    rows, placed = [], set()
    for i in runs.index:
        sweep = sorted(sweeps[setting[i]], key=lambda j: _order(seeds[j]))
        group = sweep if len(sweep) > 1 and i in sweep else [i]
        if i not in placed:
            rows.append(group)
            placed.update(group)
    return rows


def to_text(table: Table, width: int = WIDTH) -> str:
    """The table and its notes as plain text, no line longer than `width`."""
    console = Console(
        width=width, file=io.StringIO(), color_system=None, force_terminal=False, highlight=False
    )
    console.print(_rich(table.cells, table.params))
    for note in table.notes:
        console.print(note, markup=False)
    return console.file.getvalue()


def number(value: float, signed: bool = False, like: float | None = None) -> str:
    """A figure in at most ~7 characters: 4 decimals below 1, k/M/G suffixes above 10 000; with `like`, in
    the unit and decimals of that figure (a std beside its mean)."""
    if not math.isfinite(value):
        return str(value)
    size = abs(value if like is None else like)
    unit, suffix, digits = next(((u, s, d) for above, u, s, d in _SCALES if size >= above), (1.0, "", 4))
    return f"{value / unit:{'+' if signed else ''}.{digits}f}{suffix}"


# (from this size, divide by, suffix, decimals)
_SCALES = (
    (1e9, 1e9, "G", 2),
    (1e6, 1e6, "M", 2),
    (1e5, 1e3, "k", 0),
    (1e4, 1e3, "k", 1),
    (100, 1.0, "", 0),
    (1, 1.0, "", 2),
)


def value_text(value: Any) -> str:
    """A param value as params.yaml writes it, shortened to MAX_CELL characters (a path to its file name)."""
    if _missing(value):
        return ""
    if isinstance(value, (bool, type(None), list, dict)):
        text = json.dumps(value)
        text = text.strip("[]").replace('"', "").replace(", ", ",") if isinstance(value, list) else text
    else:
        text = str(value)
    if len(text) > MAX_CELL and "/" in text:
        text = "…/" + PurePosixPath(text.rstrip("/")).name
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _figures(runs: pd.DataFrame) -> list[tuple[tuple[str, str], str]]:
    """(column of `runs`, name) of the headline and cost figures that some run has."""
    wanted = [("metric", k) for k in HEADLINE] + [("train", k) for k in COST]
    return [(c, c[1]) for c in wanted if c in runs.columns and runs[c].notna().any()]


def _stat(values: pd.Series, key: str) -> str:
    """One value, or mean±std (sample std) over a sweep; empty where no run of the row has the figure."""
    values = values.dropna().astype(float)
    signed = key.startswith("lift.")
    if values.empty:
        return ""
    if len(values) == 1:
        return number(values.iloc[0], signed)
    mean, std = values.mean(), values.std()
    return f"{number(mean, signed)}±{number(std, like=mean) if std > 0 else 0}"


def _param_cell(runs: pd.DataFrame, group: list[int], key: str) -> str:
    if key == "seed" and len(group) > 1:
        return value_text(_seeds(runs, group))
    return value_text(runs.loc[group[0], ("param", key)])


def _seeds(runs: pd.DataFrame, group: list[int]) -> str:
    if ("param", "seed") not in runs.columns:
        return ""
    return ",".join(value_text(v) for v in runs.loc[group, ("param", "seed")])


def _label(runs: pd.DataFrame, group: list[int]) -> str:
    first = str(runs.loc[group[0], ("run", "name")])
    return first if len(group) == 1 else f"{first} +{len(group) - 1}"


def _check_keys(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    unknown = [k for k in keys if ("param", k) not in runs.columns]
    if unknown:
        raise LmError(
            f"--keys: no run has the param {unknown[0]!r}; give dotted keys of params.yaml such as "
            "model.n_layers"
        )
    return keys


def _fit(
    base: pd.DataFrame, params: pd.DataFrame, figures: pd.DataFrame, width: int
) -> tuple[list[str], list[str]]:
    """Param columns in order, each kept when the table still fits in `width` with it."""
    console = Console(
        width=10 * width, file=io.StringIO(), color_system=None
    )  # measures are capped at its width
    chosen, left_out = [], []
    for key in params.columns:
        trial = pd.concat([base, params[chosen + [key]], figures], axis=1)
        fits = console.measure(_rich(trial, chosen + [key])).maximum <= width
        (chosen if fits else left_out).append(key)
    return chosen, left_out


def _rich(cells: pd.DataFrame, params: list[str]) -> RichTable:
    """A compact rich table: headers short (a param by the shortest unique end of its key) and broken at dots
    (baseline.roc_auc over two lines), a sweep's row two lines high (the mean, then ±std)."""
    labels = dict(zip(params, _short_keys(params)))
    table = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for column in cells.columns:
        numeric = column not in params and column != "run"
        table.add_column(_header(labels.get(column, column)), justify="right" if numeric else "left")
    for row in cells.itertuples(index=False):
        table.add_row(*(cell.replace("±", "\n±") for cell in row))  # a sweep's std under its mean
    return table


def _header(key: str) -> str:
    """A header over lines: one per dotted part, a long part broken after an underscore (peak_ /
    memory_mb)."""
    lines = []
    for part in key.split("."):
        cuts = [i + 1 for i, char in enumerate(part[:-1]) if char == "_"] if len(part) > 9 else []
        cut = min(cuts, key=lambda i: max(i, len(part) - i), default=None)
        lines += [part] if cut is None else [part[:cut], part[cut:]]
    return "\n".join(lines)


def _short_keys(keys: list[str]) -> list[str]:
    """model.attention_options.use_rope -> use_rope; train.lr and pretrain.lr keep their section."""
    short = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
                break
        short.append(tail)
    return short


def _params(runs: pd.DataFrame) -> pd.DataFrame:
    """The param columns (none when the repository has no params file)."""
    return runs["param"] if "param" in runs.columns.get_level_values(0) else pd.DataFrame(index=runs.index)


def _order(value: Any) -> tuple:
    """Numbers by value, then anything else by its text (seed 2 before seed 10)."""
    number_like = isinstance(value, (int, float)) and not isinstance(value, bool) and not _missing(value)
    return (0, value, "") if number_like else (1, 0, str(value))


def _identity(value: Any) -> str:
    """A param value as a comparable string; a missing param is distinct from null."""
    return "\0missing" if _missing(value) else json.dumps(value, sort_keys=True, default=str)


def _missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
