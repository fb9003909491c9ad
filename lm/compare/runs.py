"""The runs `lm compare` puts side by side (the workspace, commits and their `dvc exp` experiments), read
from `dvc exp show --json` into one pandas frame.

The JSON of the dvc command rather than `dvc.api.exp_show`: the API flattens each run into one dict, turns
integers into floats (seed 1 becomes 1.0) and forgets which commit an experiment belongs to; the JSON keeps
params as written. It runs as `python -m dvc`, the dvc of lm's own environment.

>>> flatten({"model": {"n_layers": 2, "attention_options": {}}, "seed": 0})
{'model.n_layers': 2, 'seed': 0}
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from lm.errors import LmError
from lm.paths import METRICS, TRAIN_METRICS

PARAMS_FILE = "params.yaml"
# column groups of the frame: run identity, params, reports/metrics.json, reports/train/metrics.json
GROUPS = {"metric": str(METRICS), "train": str(TRAIN_METRICS)}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; an empty dict (e.g. `attention_options: {}`) gives no key at all."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_runs(all_commits: bool = False, num: int = 1, cwd: str | Path = ".") -> pd.DataFrame:
    """The workspace, the last `num` commits (every commit with `all_commits`) and their experiments."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", "--num", str(num)]
    if all_commits:
        command.append("--all-commits")
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = (proc.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("ERROR: ")
        if "not inside of a DVC repository" in message:
            raise LmError(
                f"{Path(cwd).resolve()} is not a DVC repository: run `lm compare` in the project "
                "(where dvc.yaml is)"
            )
        raise LmError(f"`dvc exp show` failed: {message}; run it by hand to see why")
    try:
        records = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise LmError("`dvc exp show --json` printed no JSON; run it by hand to see why") from None
    return parse_exp_show(records)


def parse_exp_show(records: list[dict]) -> pd.DataFrame:
    """One row per run. Columns are pairs: ("run", name | rev | kind | state), ("param", dotted key),
    ("metric", key of reports/metrics.json), ("train", key of reports/train/metrics.json). kind is workspace,
    commit or experiment; state is done, or why there are no results (failed, queued, running, error)."""
    rows = []
    for commit in records:
        kind = "workspace" if commit["rev"] == "workspace" else "commit"
        rows.append(_row(commit, kind, "done"))
        for experiment in commit.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or "done"
            rows += [
                _row(rev, "experiment", "done" if state == "success" else state) for rev in experiment["revs"]
            ]
    frame = pd.DataFrame(rows, dtype=object)  # object: a param that some runs lack stays 6, not 6.0
    if frame.empty:
        return frame
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    for column in frame.columns:
        if column[0] in GROUPS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")  # a text metric is no figure
    order = ["run", "param", *GROUPS]
    return frame[[c for group in order for c in frame.columns if c[0] == group]]


def _row(record: dict, kind: str, state: str) -> dict[tuple[str, str], Any]:
    rev = record["rev"]
    name = "workspace" if kind == "workspace" else (record.get("name") or rev[:7])
    data = record.get("data")
    if record.get("error") or not data:
        state = "error" if state == "done" else state
    row: dict[tuple[str, str], Any] = {
        ("run", "name"): name,
        ("run", "rev"): rev,
        ("run", "kind"): kind,
        ("run", "state"): state,
    }
    if not data:
        return row
    for file, content in (data.get("params") or {}).items():
        prefix = "" if file == PARAMS_FILE else f"{file}:"
        row.update({("param", prefix + k): v for k, v in flatten((content or {}).get("data") or {}).items()})
    metrics = data.get("metrics") or {}
    for group, file in GROUPS.items():
        row.update({(group, k): v for k, v in flatten((metrics.get(file) or {}).get("data") or {}).items()})
    return row


def select(runs: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The runs called `names` (an experiment name, `workspace`, a branch or a commit's sha prefix), in that
    order; a name that matches nothing is an error listing what there is."""
    picked = []
    for name in names:
        by_sha = runs["run", "rev"].str.startswith(name) if len(name) >= 4 else False
        hit = runs.index[(runs["run", "name"] == name) | by_sha].tolist()
        if not hit:
            known = ", ".join(runs["run", "name"])
            raise LmError(
                f"no run named {name!r} (there are: {known}); experiments of other commits need --all-commits"
            )
        picked += [i for i in hit if i not in picked]
    return runs.loc[picked].reset_index(drop=True)
