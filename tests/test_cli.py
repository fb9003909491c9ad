"""The `lm` command: help, params validation (exit 2, one line naming the key) and bad-input errors
(exit != 0, one line, no partial output)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import subprocess_env, tiny_params, write_params
from typer.testing import CliRunner

from lm.cli import app

runner = CliRunner()
COMMANDS = [
    "download",
    "tokenize",
    "encode",
    "split",
    "pretrain",
    "train",
    "eval",
    "export",
    "viz",
    "generate",
    "predict",
    "bench",
    "serve",
    "compare",
]
STAGES = ["download", "tokenize", "encode", "split", "train", "eval", "viz"]


def test_help_lists_every_command_and_imports_nothing_heavy():
    """`lm --help` stays fast because importing lm.cli imports none of the heavy libraries (checked as a
    behaviour, not with a wall-clock limit that a loaded machine would break)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lm.cli", "--help"], capture_output=True, text=True, env=subprocess_env()
    )
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout
    probe = (
        "import sys, lm.cli; heavy = [m for m in ('torch', 'pandas', 'numpy', 'pydantic', 'dvc') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=subprocess_env())
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    if command in STAGES or command == "bench":
        assert "--params" in result.output


def _run(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "lm.cli", *args], cwd=cwd, capture_output=True, text=True, env=subprocess_env()
    )


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"model.n_layerz": 3}, "model.n_layerz"),
        ({"model.n_layers": "three"}, "model.n_layers"),
        ({"model.n_heads": 3}, "model.n_heads"),
        ({"model.attention": "flash"}, "model.attention"),
        ({"split.val_fraction": 0.5, "split.test_fraction": 0.5}, "split.val_fraction"),
        ({"task": "regression"}, "task"),
        ({"bogus": 1}, "bogus"),
        (
            {"model.attention": "performer", "model.attention_options": {"bogus": 1}},
            "model.attention_options.bogus",
        ),
        ({"model.attention": "rotary", "model.d_model": 30, "model.n_heads": 2}, "model.attention"),
    ],
)
def test_bad_params_stop_with_one_line_naming_the_key(tmp_path, overrides, key):
    raw = tiny_params()
    for dotted, value in overrides.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    write_params(tmp_path / "params.yaml", raw)
    for stage in ("download", "train"):
        proc = _run([stage], tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and key in lines[0], proc.stderr
    assert not (tmp_path / "data").exists()


def test_missing_params_file(tmp_path):
    proc = _run(["download", "--params", "nope.yaml"], tmp_path)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr


def _download(tmp_path, source, **overrides):
    write_params(tmp_path / "params.yaml", tiny_params(**{"data.source": str(source), **overrides}))
    return _run(["download"], tmp_path)


@pytest.mark.parametrize(
    "frame, overrides, words",
    [
        (pd.DataFrame({"comment": ["hi"], "target": [0.1]}), {}, ["text"]),
        (pd.DataFrame({"text": ["a", "b"], "target": ["0.1", "high"]}), {}, ["target", "numeric"]),
        (pd.DataFrame({"text": ["a", "b"], "target": [0.1, 1.5]}), {}, ["target", "[0"]),
        (pd.DataFrame({"text": ["  ", "\n"], "target": [0.1, 0.2]}), {}, ["empty"]),
        (pd.DataFrame({"text": ["a", "b"]}), {}, ["target"]),
    ],
)
def test_bad_input_data_is_one_line_and_leaves_no_output(tmp_path, frame, overrides, words):
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    proc = _download(tmp_path, path, **overrides)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word.lower() in lines[0].lower()
    assert not (tmp_path / "data" / "raw").exists()


def test_missing_source_file(tmp_path):
    proc = _download(tmp_path, tmp_path / "missing.csv")
    assert (
        proc.returncode == 1 and "missing.csv" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    )


def test_empty_rows_are_dropped_and_counted(tmp_path):
    path = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good", "  ", "fine", ""], "target": [0.0, 0.5, 0.9, 0.1]}).to_csv(
        path, index=False
    )
    proc = _download(tmp_path, path)
    assert proc.returncode == 0, proc.stderr
    assert "2 empty rows dropped" in proc.stderr.replace("\n", " ")
    assert len(pd.read_parquet(tmp_path / "data" / "raw" / "corpus.parquet")) == 2


@pytest.mark.parametrize(
    "stage, needs",
    [
        ("tokenize", "data/raw"),
        ("encode", "data/raw"),
        ("split", "data/encoded"),
        ("train", "data/encoded"),
        ("eval", "models"),
        ("viz", "models"),
    ],
)
def test_stage_before_its_inputs_says_what_to_run(tmp_path, stage, needs):
    write_params(tmp_path / "params.yaml", tiny_params())
    proc = _run([stage], tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and needs in line and "run `lm" in line


def test_predict_without_a_model(tmp_path):
    proc = _run(["predict", "hello", "--model", str(tmp_path / "nomodel")], tmp_path)
    assert proc.returncode == 1 and "config.json" in proc.stderr


@pytest.mark.parametrize("task", ["classify", "mlm", "clm"])
def test_bench_prints_one_json_line_of_throughput(tmp_path, task):
    import json

    write_params(tmp_path / "params.yaml", tiny_params(task=task))
    proc = _run(["bench", "--steps", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["task"] == task and figures["steps"] == 2 and figures["tokens_per_s"] > 0
    # tokens_per_s is tokens / the unrounded seconds, which lie within 0.5 ms of the printed ones (no timing
    # tolerance: a short run's seconds may round to a few ms, so only the rounding interval is exact)
    tokens, seconds, rate = (
        2 * figures["batch"] * figures["seq_len"],
        figures["seconds"],
        figures["tokens_per_s"],
    )
    assert rate >= tokens / (seconds + 0.0005) - 0.05
    assert seconds <= 0.0005 or rate <= tokens / (seconds - 0.0005) + 0.05
