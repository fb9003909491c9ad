"""benchmarks/gpu_check.py, the one prepared GPU check (issue 22), as CI can run it: its dry run on the CPU
reports every section with a pass or skip status, says "no CUDA" for the CUDA-only parts, leaves the committed
benchmarks/results/gpu.json alone and finishes within 90 s; the junit counting is checked on a small xml,
and the list of tests the check runs covers every test file that asks for CUDA."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
COMMITTED = REPO / "benchmarks" / "results" / "gpu.json"
SECTIONS = ("tests", "train_step", "loss_equality", "ddp", "generate", "serve")


def _gpu_check():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu-check") / "gpu.json"
    before = COMMITTED.read_bytes() if COMMITTED.exists() else None
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = COMMITTED.read_bytes() if COMMITTED.exists() else None
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"line": line, "file": json.loads(out.read_text()), "seconds": seconds, "same": before == after}


@pytest.mark.slow
def test_dry_run_reports_every_section_with_a_pass_or_skip_status(dry_run):
    figures = dry_run["line"]
    assert figures == dry_run["file"]  # --out holds the printed line
    assert figures["benchmark"] == "gpu" and figures["dry_run"] is True
    for name in SECTIONS:
        assert figures[name]["status"] in ("pass", "skipped"), (name, figures[name])
    assert figures["status"] == "pass" and figures["failed"] == []
    assert figures["device"]["device"] == "cpu" and figures["device"]["torch"]
    assert 0 < figures["wall_s"] < 90 and figures["budget_s"] == 300
    # what did run, ran: the tiny training steps, the bf16-vs-fp32 comparison, decoding and the server
    assert figures["train_step"]["clm"]["lm"]["tokens_per_s"] > 0
    assert figures["train_step"]["clm"]["hf"]["tokens_per_s"] > 0
    assert figures["train_step"]["compile"]["graph_breaks"] >= 0
    assert len(figures["loss_equality"]["bf16_losses"]) == len(figures["loss_equality"]["fp32_losses"]) == 10
    assert figures["loss_equality"]["bf16"]["pass"] is True
    assert all(r["same_tokens"] for r in figures["generate"]["models"].values())
    assert figures["serve"]["requests"] > 0 and figures["serve"]["errors"] == 0
    assert figures["ddp"]["status"] == "pass" and figures["ddp"]["metrics"]["steps"] == 8


@pytest.mark.slow
def test_dry_run_says_the_cuda_parts_are_skipped(dry_run):
    figures = dry_run["line"]
    assert figures["tests"]["status"] == "skipped" and figures["tests"]["skipped"].startswith("no CUDA")
    counts = figures["tests"]["counts"]
    assert counts["collected"] == counts["skipped"] > 0 and figures["tests"]["failing"] == []
    assert figures["train_step"]["clm"]["lm_compiled"] == {"status": "skipped", "skipped": "no CUDA"}
    assert figures["loss_equality"]["fp16"] == {"status": "skipped", "skipped": "no CUDA"}
    assert figures["ddp"]["device"] == "cpu"  # the dry run's DDP: 2 processes over gloo


@pytest.mark.slow
def test_dry_run_leaves_the_committed_results_alone_and_is_quick(dry_run):
    assert dry_run["same"]
    assert dry_run["seconds"] < 90


def test_the_check_runs_every_test_that_asks_for_cuda():
    gpu_check = _gpu_check()
    listed = {t.split("::")[0] for t in gpu_check.GPU_TESTS}
    asking = {
        str(p.relative_to(REPO))
        for p in (REPO / "tests").glob("test_*.py")
        if p.name != "test_gpu_check.py"
        and re.search(r"pytest\.mark\.gpu|skipif\(not torch\.cuda\.is_available\(\)", p.read_text())
    }
    assert asking == listed


def test_junit_counts(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" '
        'skipped="1" tests="5"><testcase classname="tests.test_gpu" name="test_a" />'
        '<testcase classname="tests.test_gpu" name="test_b"><failure message="x" /></testcase>'
        '<testcase classname="tests.test_fused" name="test_c[amp0]"><error message="y" /></testcase>'
        '<testcase classname="tests.test_gpu" name="test_d"><skipped message="z" /></testcase>'
        '<testcase classname="tests.test_gpu" name="test_e" /></testsuite></testsuites>'
    )
    assert _gpu_check().junit_counts(xml) == {
        "collected": 5,
        "passed": 2,
        "failed": 2,
        "skipped": 1,
        "failing": ["tests/test_gpu.py::test_b", "tests/test_fused.py::test_c[amp0]"],
    }


def test_report_lists_the_training_rows_of_a_gpu_run():
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    clm = {
        "batch": 16,
        "seq": 1024,
        "amp": "bf16",
        "lm": {"tokens_per_s": 300000.0, "mfu": 0.3},
        "lm_compiled": {"tokens_per_s": 420000.0, "mfu": 0.42},
        "hf": {"tokens_per_s": 350000.0, "mfu": 0.35},
    }
    f = {
        "device": {"name": "NVIDIA H100 80GB HBM3"},
        "gpu": "NVIDIA H100 80GB HBM3",
        "train_step": {"clm": clm, "classify": {"lm_compiled": {"status": "skipped"}}},
        "loss_equality": {"bf16": {"pass": True}},
        "run": {"mode": "full", "date": "2026-12-06T15:00:00Z"},
    }
    rows = [line for line in report.render({"gpu": f}).splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == 2  # lm eager and compiled vs GPT-2; the classifier had no figures
    assert "| 420,000 | 350,000 | 1.20x | MFU lm 42.0%, HF 35.0%; bf16 losses = fp32's: yes |" in rows[1]
    assert (
        "NVIDIA H100 80GB HBM3, GPT-2 small sized causal LM (batch 16 x 1024, bf16): lm compiled" in rows[1]
    )
