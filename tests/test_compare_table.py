"""`lm compare`: the table of a repository's DVC experiments. On real `dvc exp run` experiments
(tests/compare_fixture.py, the four of issue 19 and a seed sweep) it shows only the params that changed, the
headline and cost figures (empty where a run has none), mean±std over the sweep with the values the runs
wrote, and no line over 160 characters; errors are one line with the fix. The cell formatting and the seed
grouping are also checked on hand-made runs."""

from __future__ import annotations

import statistics
import subprocess
import sys

import compare_fixture
import pandas as pd
import pytest
import yaml
from compare_reports import figures
from conftest import subprocess_env
from typer.testing import CliRunner

from lm.cli import app
from lm.compare.command import compare
from lm.compare.report import markdown
from lm.compare.runs import parse_exp_show, read_runs
from lm.compare.table import COST, HEADLINE, build_table, number, seed_groups, to_text, value_text
from lm.errors import LmError

runner = CliRunner()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return compare_fixture.experiments(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(repo):
    return read_runs(cwd=repo)


def expected(repo, **overrides) -> dict:
    """The figures compare_reports.py wrote for HEAD's params with `overrides` (dotted keys)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return figures(params)


def row(table, run: str) -> pd.Series:
    return table.cells.set_index("run").loc[run]


@pytest.mark.slow
def test_compare_table_has_only_the_changed_params_then_headline_and_cost(runs):
    table = build_table(runs, width=1000)  # room for every column
    # the model's params before the data's, seed last
    assert table.params == [
        "task",
        "model.n_layers",
        "model.attention",
        "model.attention_options.use_rope",
        "data.source",
        "seed",
    ]
    figures_shown = [c for c in table.cells.columns if c not in ("run", "n", *table.params)]
    assert figures_shown == list(HEADLINE + COST)
    assert set(table.cells["run"]) == {"workspace", "main +1", "sweep-0 +2", "deeper", "performer", "mlm"}
    assert row(table, "deeper")["model.n_layers"] == "6"
    assert row(table, "performer")[["model.attention", "model.attention_options.use_rope"]].tolist() == [
        "performer",
        "true",
    ]
    assert row(table, "workspace")["model.attention_options.use_rope"] in (
        "",
        "null",
    )  # HEAD: the kind's default
    assert row(table, "sweep-0 +2")["data.source"] == "…/train.csv"


@pytest.mark.slow
def test_compare_table_puts_each_figure_in_its_task_column(repo, runs):
    table = build_table(runs, width=1000)
    deeper, mlm = row(table, "deeper"), row(table, "mlm")
    want = expected(repo, **{"model.n_layers": 6})
    assert deeper["roc_auc"] == number(want["roc_auc"]) and deeper["lift.roc_auc"] == number(
        want["roc_auc"] - 0.93, True
    )
    assert (
        deeper["baseline.roc_auc"] == "0.9300" and deeper["perplexity"] == deeper["baseline.perplexity"] == ""
    )
    assert mlm["roc_auc"] == mlm["pr_auc"] == "" and mlm["perplexity"] == number(
        expected(repo, task="mlm")["perplexity"]
    )
    assert mlm["baseline.perplexity"] == "80.00"
    assert deeper["n_params"] == "340k" and deeper["peak_memory_mb"] == "1100" and deeper["seconds"] == "160"


@pytest.mark.slow
def test_compare_table_shows_a_seed_sweep_as_mean_and_std(repo, runs):
    table = build_table(runs, width=1000)
    sweep = row(table, "sweep-0 +2")
    aucs = [
        expected(repo, seed=s, **{"data.source": compare_fixture.SWEEP_SOURCE})["roc_auc"] for s in range(3)
    ]
    assert sweep["n"] == "3" and sweep["seed"] == "0,1,2"
    assert sweep["roc_auc"] == f"{statistics.mean(aucs):.4f}±{statistics.stdev(aucs):.4f}"
    assert (
        row(table, "main +1")["n"] == "2" and row(table, "workspace")["n"] == "1"
    )  # the workspace repeats main
    assert any("sweep-0, sweep-1, sweep-2" in note and "seed 0,1,2" in note for note in table.notes)
    per_run = build_table(runs, aggregate=False, width=1000)
    assert "n" not in per_run.cells.columns and len(per_run.cells) == 2 + len(compare_fixture.EXPERIMENTS)


@pytest.mark.slow
def test_compare_prints_lines_of_at_most_160_characters_and_says_what_it_left_out(repo, runs, monkeypatch):
    monkeypatch.chdir(repo)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 160
    header = "\n".join(lines[:3])
    for label in (
        "run",
        "task",
        "n_layers",
        "attention",
        "roc_auc",
        "baseline",
        "lift",
        "perplexity",
        "seconds",
        "tokens_",
        "memory_mb",
        "n_params",
    ):
        assert label in header
    assert "±" in result.output and "train.lr" not in result.output
    left_out = next(line for line in lines if line.startswith("left out"))
    assert "--keys" in left_out  # this table is too wide for all six changed params
    narrow = to_text(build_table(runs, width=100), width=100)
    assert max(map(len, narrow.splitlines())) <= 100


@pytest.mark.slow
def test_compare_keys_names_and_num_choose_what_is_shown(repo):
    runs = read_runs(num=2, cwd=repo)
    older = runs[runs["run", "kind"] == "commit"].iloc[-1]  # the commit from before the cost figures
    table = build_table(runs, keys=["data.source"], aggregate=False, width=1000)
    assert table.params == ["data.source"]
    old = row(table, older["run", "name"])
    assert old["peak_memory_mb"] == old["n_params"] == "" and old["seconds"] == "120"
    text = compare(["deeper", "main"], keys=["model.n_layers"], cwd=repo)
    assert "deeper" in text and "performer" not in text and "n_layers" in text


@pytest.mark.slow
def test_compare_writes_markdown(repo, tmp_path):
    path = tmp_path / "runs.md"
    compare(md=path, cwd=repo)
    text = path.read_text()
    head, rule, *rows = text.splitlines()
    assert (
        head.startswith("| run")
        and "roc_auc" in head
        and "baseline.perplexity" in head
        and "n_params" in head
    )
    assert set(rule) <= set("|:- ") and len(rows) >= 6
    assert "| deeper" in text and "±" in text and "- sweep-0 +2: mean±std" in text
    assert [p.name for p in tmp_path.iterdir()] == ["runs.md"]  # written in place, no temporary left


@pytest.mark.slow
def test_compare_errors_are_one_line_with_the_fix(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["compare"])
    assert (
        result.exit_code == 1
        and "not a DVC repository" in result.output
        and len(result.output.splitlines()) == 1
    )
    bare = compare_fixture.init_repo(tmp_path / "bare")
    monkeypatch.chdir(bare)
    assert "no commit yet" in runner.invoke(app, ["compare"]).output
    compare_fixture.sh(bare, "git", "add", "-A")
    compare_fixture.sh(bare, "git", "commit", "-qm", "only a commit")
    result = runner.invoke(app, ["compare"])
    assert (
        result.exit_code == 1 and "dvc exp run -S" in result.output and len(result.output.splitlines()) == 1
    )
    monkeypatch.chdir(repo)
    for args, words in ((["nope"], "no run named 'nope'"), (["--keys", "model.n_layerz"], "model.n_layerz")):
        result = runner.invoke(app, ["compare", *args])
        assert result.exit_code == 1 and words in result.output and len(result.output.splitlines()) == 1


def test_compare_formats_figures_and_params_short():
    assert [number(v) for v in (0.95213, 45.678, 101.2, 9535.6, 12345.0, 180000.0, 1234567.0)] == [
        "0.9521",
        "45.68",
        "101",
        "9536",
        "12.3k",
        "180k",
        "1.23M",
    ]
    assert number(-0.0183, signed=True) == "-0.0183" and number(0.0002, like=101.2) == "0"
    assert value_text("/home/someone/data/corpora/jigsaw/train.csv") == "…/train.csv"
    assert value_text("a-very-long-value-without-any-slash") == "a-very-long-value…"
    assert [value_text(v) for v in (True, None, ["a", "b"], 0.002, float("nan"))] == [
        "true",
        "null",
        "a,b",
        "0.002",
        "",
    ]


def record(rev: str, name: str | None, params: dict, metrics: dict | None = None, error=None) -> dict:
    files = {"reports/metrics.json": {"data": metrics}} if metrics else {}
    return {
        "rev": rev,
        "name": name,
        "error": error,
        "experiments": None,
        "data": {"rev": rev, "params": {"params.yaml": {"data": params}}, "metrics": files},
    }


def test_compare_groups_runs_that_differ_only_in_seed_and_leaves_failed_ones_out():
    """Hand-made `dvc exp show --json` records: a failed experiment is named in a note, the workspace that
    repeats a run of the sweep stays its own row, and a sweep that also changes another param is no sweep."""
    head = record("a" * 40, "main", {"seed": 0, "model": {"n_layers": 2}}, {"roc_auc": 0.90})
    head["experiments"] = [
        {
            "name": "s1",
            "executor": None,
            "revs": [record("b" * 40, "s1", {"seed": 1, "model": {"n_layers": 2}}, {"roc_auc": 0.92})],
        },
        {
            "name": "deep",
            "executor": None,
            "revs": [record("c" * 40, "deep", {"seed": 2, "model": {"n_layers": 4}}, {"roc_auc": 0.95})],
        },
        {
            "name": "broken",
            "executor": {"state": "failed"},
            "revs": [record("d" * 40, "broken", {"seed": 0, "model": {"n_layers": 8}}, None)],
        },
    ]
    workspace = record("workspace", None, {"seed": 1, "model": {"n_layers": 2}}, {"roc_auc": 0.92})
    runs = parse_exp_show([workspace, head])
    assert runs["run", "state"].tolist() == ["done", "done", "done", "done", "failed"]
    assert seed_groups(runs[runs["run", "state"] == "done"]) == [[0], [1, 2], [3]]
    table = build_table(runs)
    assert table.cells["run"].tolist() == ["workspace", "main +1", "deep"]
    assert row(table, "main +1")["roc_auc"] == "0.9100±0.0141" and table.params == ["model.n_layers", "seed"]
    assert "no results (left out): broken (failed)" in table.notes
    assert "main +1" in markdown(table)
    with pytest.raises(LmError, match="no run has results"):
        build_table(runs[runs["run", "state"] == "failed"])


def test_compare_imports_no_torch():
    """`lm compare` answers at dvc's speed: nothing of lm/compare imports torch."""
    probe = "import sys, lm.compare.command, lm.compare.report; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    assert out.stdout.strip() == "False"
