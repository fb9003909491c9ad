"""docs/results.md's speed tables are generated from the saved benchmark figures (benchmarks/report.py), the
benchmarks report flags they computed, never literals, and train_step.py's MFU follows from its figures."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _module(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


report = _module("report")
record = _module("record")

RUN = {
    "command": "python benchmarks/x.py --quick",
    "date": "2026-01-02T03:04:05Z",
    "mode": "quick",
    "cpu_count": 2,
    "cpu_model": "Test CPU",
    "torch": "2.0",
    "python": "3.11.0",
    "commit": "abc1234",
}
SAMPLE = {
    "train_step": {
        "benchmark": "train_step",
        "batch": 8,
        "seq": 128,
        "run": {**RUN, "mode": "full"},
        "results": [
            {
                "task": "clm",
                "hf_use_cache": False,
                "hf_returned_cache": False,
                "lm_tokens_per_s": 12000.0,
                "hf_tokens_per_s": 10000.0,
                "ratio_lm_over_hf": 1.2,
            },
            {
                "task": "classify",
                "last_block_rows": {"lm": 1, "hf": 128, "lm_full": 128},
                "lm_full_same_logits": True,
                "lm_tokens_per_s": 13000.0,
                "hf_tokens_per_s": 10000.0,
                "lm_full_tokens_per_s": 10700.0,
                "ratio_lm_over_hf": 1.3,
                "ratio_lm_full_over_hf": 1.07,
            },
        ],
    },
    "encode": {
        "benchmark": "encode",
        "corpus_mb": 2.0,
        "vocab_size": 2000,
        "threads": 2,
        "hf_call": "encode_batch_fast",
        "ids_identical": False,
        "lm_batch_mb_s": 15.0,
        "hf_mb_s": 6.0,
        "lm_batch_over_hf_speed": 2.5,
        "run": RUN,
    },
    "generate": {
        "benchmark": "generate",
        "prompt_len": 16,
        "run": RUN,
        "results": [
            {
                "kind": "standard",
                "new_tokens": 64,
                "cache_tokens_per_s": 400.0,
                "no_cache_tokens_per_s": 100.0,
                "speedup": 4.0,
                "same_tokens": True,
            }
        ],
    },
}


def test_render_makes_one_row_per_comparison_from_the_figures():
    table = report.render(SAMPLE)
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(report.HEADER) + " |"
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == 5  # clm, classify CLS-only, classify full last block, encode, generate
    clm, cls_only, full, enc, gen = rows
    assert "`GPT2LMHeadModel` (`use_cache=False`)" in clm and "| 12,000 | 10,000 | 1.20x |" in clm
    assert "GPT-2 cache off: yes" in clm and clm.endswith("| full, 2026-01-02 |")
    assert (
        "CLS row only" in cls_only
        and "| 1.30x |" in cls_only
        and "last-block rows: lm 1, BERT 128" in cls_only
    )
    assert "every row through the last block" in full and "| 10,700 | 10,000 | 1.07x |" in full
    assert "same logits as the CLS-only form: yes" in full
    assert "`encode_batch_fast`" in enc and "| 15.0 | 6.00 | 2.50x |" in enc
    assert "ids identical: **NO**" in enc and enc.endswith("| quick, 2026-01-02 |")  # the flag as computed
    assert "same tokens: yes" in gen and "| 400 | 100 | 4.00x |" in gen
    assert (
        "- `encode`: `python benchmarks/x.py --quick` (quick) on 2026-01-02T03:04:05Z, 2 CPUs (Test CPU)"
        in table
    )


def test_render_finetune_rows_give_ms_per_step_and_the_initial_loss_check():
    row = {
        "model": {"vocab": 30522, "d": 384, "layers": 6, "heads": 12, "ff": 1536},
        "batch": 32,
        "seq": 64,
        "lm_ms_per_step": 900.0,
        "hf_ms_per_step": 1200.0,
        "lm_over_hf_speed": 1.333,
    }
    figures = {
        "benchmark": "finetune",
        "run": RUN,
        "results": [
            {**row, "task": "classify", "same_initial_loss": True},
            {**row, "task": "clm", "same_initial_loss": False},
        ],
    }
    rows = [line for line in report.render({"finetune": figures}).splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == 2
    assert "`SequenceClassifier` + `init_from` vs `BertForSequenceClassification`" in rows[0]
    assert "| ms/step | 900 | 1,200 | 1.33x | same initial loss: yes |" in rows[0]
    assert "`GPT2LMHeadModel`" in rows[1] and "same initial loss: **NO**" in rows[1]


def test_render_attention_rows_include_fused_vs_explicit():
    case = lambda s, m: {"seconds": s, "first_s": s, "passes": 1, "peak_mib": m}  # noqa: E731
    figures = {
        "benchmark": "attention",
        "mode": "bidirectional",
        "lengths": [256, 2048],
        "growth_from_to": [256, 2048],
        "run": RUN,
        "results": [
            {
                "kind": "standard",
                "time_growth": 20.0,
                "memory_growth": 5.0,
                "cases": [{"L": 2048, **case(0.4, 20)}],
            },
            {
                "kind": "linear",
                "time_growth": 8.0,
                "memory_growth": 7.0,
                "cases": [{"L": 2048, **case(0.1, 40)}],
            },
        ],
        "fused": {
            "kind": "standard",
            "lengths": [1024, 8192],
            "cases": [
                {
                    "L": 1024,
                    "explicit": case(0.2, 60),
                    "fused": case(0.15, 14),
                    "time_ratio": 0.75,
                    "memory_ratio": 0.23,
                },
                {
                    "L": 8192,
                    "explicit": case(16.0, 3200),
                    "fused": case(4.0, 96),
                    "time_ratio": 0.25,
                    "memory_ratio": 0.03,
                },
            ],
        },
    }
    rows = [line for line in report.render({"attention": figures}).splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == 2
    assert "`linear` vs `standard`" in rows[0] and "| 100 | 400 | 4.00x |" in rows[0]
    assert "L = 8,192: `standard` fused" in rows[1] and "| 4,000 | 16,000 | 4.00x |" in rows[1]
    assert "peak memory 96.0 vs 3,200 MiB (fused / explicit 0.03)" in rows[1]


def test_write_replaces_only_the_marked_section(tmp_path):
    results = tmp_path / "results"
    for name, figures in SAMPLE.items():
        record.write_json(results / f"{name}.json", figures)
    page = tmp_path / "results.md"
    page.write_text(f"# x\n\nbefore\n\n{report.START}\nold table\n{report.END}\n\nafter\n")
    new = report.replace_block(page.read_text(), report.block(report.load(results)))
    assert new.startswith("# x\n\nbefore\n\n") and new.endswith("\n\nafter\n")
    assert "old table" not in new and report.render(SAMPLE) in new
    assert report.page_block(new) == report.block(SAMPLE)
    with pytest.raises(SystemExit, match="speed-table"):
        report.replace_block("# no markers\n", "x")


def test_finish_prints_and_saves_the_same_figures_with_the_run(tmp_path, capsys):
    out = record.finish({"benchmark": "demo", "value": 1.5}, quick=True, results_dir=tmp_path)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert printed == saved == out
    assert saved["value"] == 1.5 and saved["run"]["mode"] == "quick" and saved["run"]["cpu_count"] >= 1
    assert {"command", "date", "torch", "python", "platform"} <= set(saved["run"])


def test_results_page_speed_table_is_the_one_generated_from_the_committed_results():
    results = report.load()
    assert {"train_step", "encode", "generate"} <= set(results), (
        "run the benchmarks to write benchmarks/results/"
    )
    assert report.page_block(report.PAGE.read_text()) == report.block(results), (
        "docs/results.md's speed table is out of date: run python benchmarks/report.py --write"
    )


def test_results_page_serve_table_is_the_one_generated_from_the_saved_serve_run():
    results = report.load()
    page = report.PAGE.read_text()
    assert report.page_block(page, report.SERVE_START, report.SERVE_END) == report.serve_block(results)
    if "serve" in results:  # every cell of the run is a row, and each model's figures are the run's own
        f = results["serve"]
        cells = sum(len(c) for m in f["models"].values() for c in m["rows"].values())
        limits = sum(len(m["limits"]) for m in f["models"].values())
        assert cells + limits == report.serve_block(results).count("\n| ") - 2  # less two header rows
        for m in f["models"].values():
            assert f"**{m['throughput_ratio']}x**" in page and f"**{m['server_over_limit']}**" in page


def test_every_committed_result_says_how_it_was_run():
    for name, figures in report.load().items():
        assert figures["benchmark"] == name
        assert figures["run"]["mode"] in ("full", "quick") and figures["run"]["command"].startswith(
            "python benchmarks/"
        )


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_no_benchmark_reports_a_literal_flag(script):
    """A reported flag (ids_identical, same_tokens, ...) is computed: no dict literal holds a bare bool."""
    tree = ast.parse((BENCH / script).read_text())
    literal = [
        (node.lineno, ast.unparse(k))
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for k, v in zip(node.keys, node.values)
        if isinstance(v, ast.Constant) and isinstance(v.value, bool)
    ]
    assert not literal, f"{script}: literal flags at {literal}"


# ---- the GPU run of train_step.py: MFU ---------------------------------------------------------------------

train_step_bench = _module("train_step")


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100-PCIE-40GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_gpu_peak_comes_from_the_table_by_name(name, peak):
    assert train_step_bench.peak_bf16_tflops(name) == peak


def test_flops_per_token_is_6n_plus_the_attention_term_without_the_position_table():
    shape = train_step_bench.Shape(d=4, layers=3, heads=2, ff=8, vocab=10)
    model = torch.nn.Sequential(
        torch.nn.Embedding(7, 4), torch.nn.Linear(4, 5)
    )  # 28 "positions" + 25 weights
    assert train_step_bench.flops_per_token(model, shape, seq=6, max_len=7) == 6 * 25 + 12 * 3 * 4 * 6
    gpt2 = train_step_bench.lm_model("clm", 1025, "standard", train_step_bench.GPT2_SMALL)
    n = sum(p.numel() for p in gpt2.parameters()) - 1025 * 768
    assert 123e6 < n < 125e6  # GPT-2 small: 124M weights that multiply


def test_gpu_row_reports_tokens_per_second_and_mfu():
    f = {
        "benchmark": "train_step_cuda",
        "gpu": "NVIDIA H100 80GB HBM3",
        "amp": "bf16",
        "compile": True,
        "peak_tflops": 989.0,
        "batch": 8,
        "seq": 1024,
        "run": RUN,
        "results": [
            {
                "task": "clm",
                "lm_tokens_per_s": 400000.0,
                "hf_tokens_per_s": 380000.0,
                "ratio_lm_over_hf": 1.05,
                "tokens_per_s": 400000.0,
                "mfu": 0.412,
                "hf_mfu": 0.391,
            }
        ],
    }
    (row,) = [
        line for line in report.render({"train_step_cuda": f}).splitlines()[2:] if line.startswith("| ")
    ]
    assert (
        "training step on NVIDIA H100 80GB HBM3, GPT-2 small sized causal LM (batch 8 x 1024, bf16, compiled)"
        in row
    )
    assert "| 400,000 | 380,000 | 1.05x | MFU lm 41.2%, GPT-2 39.1% of 989 TFLOP/s bf16 |" in row


def test_train_step_with_a_peak_reports_mfu_from_its_own_figures():
    """The MFU path on CPU (`--peak-tflops`; on a GPU the peak comes from the table): mfu = FLOPs per token x
    tokens/s / peak, computed from the figures the run reports."""
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "train_step.py"),
            "--tasks",
            "clm",
            "--batch",
            "2",
            "--seq",
            "16",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--peak-tflops",
            "0.5",
            "--no-save",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    (row,) = figures["results"]
    assert (
        figures["benchmark"] == "train_step" and figures["peak_tflops"] == 0.5 and figures["device"] == "cpu"
    )
    assert row["tokens_per_s"] == row["lm_tokens_per_s"] > 0
    assert row["mfu"] == pytest.approx(row["flops_per_token"]["lm"] * row["tokens_per_s"] / 0.5e12, abs=1e-4)
    assert {
        "lm_s_per_step",
        "hf_tokens_per_s",
        "ratio_lm_over_hf",
        "hf_use_cache",
    } <= row.keys()  # the CPU keys stay
