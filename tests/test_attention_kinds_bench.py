"""benchmarks/attention_kinds.py, the 14-kind table of docs/attention.md §7: its command line end to end on
tiny synthetic corpora (the JSON line's shape, mean and std against the brute-force formulas), a run
reproduced from its seed, and the docs table generated from the committed results."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
from conftest import REPO, SHARED_DATA

BENCH = REPO / "benchmarks"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_attention_kinds", BENCH / "attention_kinds.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _module()


@pytest.fixture(autouse=True)
def _keep_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """A labelled CSV (`text`, `hate`) and a text file of blank-line-separated documents, from the embedded
    generator: what the benchmark reads from ../shared/data, in miniature."""
    from lm.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpora")
    frame = generate_corpus(400, 0, []).rename(columns={"target": "hate"})
    frame[["id", "text", "hate"]].to_csv(root / "tweets.csv", index=False)
    (root / "stories.txt").write_text("\n\n".join(frame["text"]) + "\n")
    return root / "tweets.csv", root / "stories.txt"


def _brute(values):  # type: ignore[no-untyped-def]
    ok = [v for v in values if v is not None and math.isfinite(v)]
    mean = sum(ok) / len(ok)
    std = math.sqrt(sum((v - mean) ** 2 for v in ok) / (len(ok) - 1)) if len(ok) > 1 else None
    return mean, std


def test_mean_std_is_the_sample_formula_over_the_finite_values():
    for values in ([0.8, 0.9, 0.85], [3.0, None, 5.0, float("nan")], [12.5]):
        got = bench.mean_std(values)
        mean, std = _brute(values)
        assert got["mean"] == pytest.approx(mean, rel=1e-12)
        assert (got["std"] is None) if std is None else got["std"] == pytest.approx(std, rel=1e-12)
        assert got["n"] == sum(v is not None and math.isfinite(v) for v in values) and got["values"] == values
    assert bench.mean_std([None])["mean"] is None


def test_command_line_gives_the_table_and_one_json_line(corpora, tmp_path, capsys):
    csv, txt = corpora
    figures = bench.main(
        [
            "--kinds",
            "standard,linear",
            "--seeds",
            "2",
            "--steps",
            "3",
            "--encoder-data",
            str(csv),
            "--decoder-data",
            str(txt),
            "--lengths",
            "64,128",
            "--max-length",
            "128",
            "--timing-budget",
            "0",
            "--no-save",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    line = json.loads(out[-1])
    assert line == json.loads(json.dumps(figures))  # the JSON line is the returned figures, run info included
    assert (
        line["benchmark"] == "attention_kinds" and line["seeds"] == [0, 1] and line["run"]["mode"] == "full"
    )
    assert set(line["forms"]) == {"encoder", "decoder"}
    for name, form in line["forms"].items():
        metric = form["metric"]
        assert metric == ("roc_auc" if name == "encoder" else "perplexity")
        assert [r["kind"] for r in form["results"]] == ["standard", "linear"]
        assert form["baseline"][metric] is not None
        for r in form["results"]:
            assert [run["seed"] for run in r["runs"]] == [0, 1]
            assert all("error" not in run and run["steps"] == 3 for run in r["runs"])
            for key in (metric, "tokens_per_s"):  # the aggregate is the formula over the per-seed values
                values = [run[key] for run in r["runs"]]
                mean, std = _brute(values)
                assert r[key]["values"] == values and r[key]["n"] == 2
                assert r[key]["mean"] == pytest.approx(mean, rel=1e-12) and r[key]["std"] == pytest.approx(
                    std, rel=1e-12
                )
            ok = (
                [0.0 <= v <= 1.0 for v in r[metric]["values"]]
                if metric == "roc_auc"
                else [v > 1.0 for v in r[metric]["values"]]
            )
            assert all(ok)
            layer = r["layer"]
            assert [c["L"] for c in layer["cases"]] == [64, 128]
            assert layer["longest_fit"] == 128 and layer["capped"] and layer["stop"] == "max length 128"
            assert all(c["peak_mib"] >= 0 and c["seconds"] > 0 for c in layer["cases"])
    table = out[:-1]
    assert sum(line.startswith("| `standard` |") for line in table) == 2  # one row per form
    assert any("Baseline on the same test rows: tfidf_logreg" in line for line in table)
    assert any("kneser_ney_3gram" in line for line in table)


def test_a_run_is_reproduced_from_its_seed(corpora, tmp_path):
    csv, _ = corpora
    form = bench.Form("encoder", "classify", csv, "hate", "roc_auc", True, 3, 64, 64, False)
    prep = bench.prepare(form, tmp_path / "encoder")
    first, again, other = (bench.train_and_score(prep, "performer", seed, 3) for seed in (0, 0, 1))
    assert "error" not in first
    assert first["roc_auc"] == again["roc_auc"] and first["final_train_loss"] == again["final_train_loss"]
    assert other["final_train_loss"] != first["final_train_loss"]


def _figures(metric: str, higher: bool, values: dict[str, list]) -> dict:
    """Figures as main() writes them, for two kinds: per-seed metric values (None: a failed run)."""
    layer = {
        "longest_fit": 1024,
        "capped": False,
        "stop": "memory at 2048: 3000 MiB",
        "cases": [
            {"L": 256, "seconds": 0.0123, "peak_mib": 4.5},
            {"L": 1024, "seconds": 0.25, "peak_mib": 40.0},
        ],
    }
    results = [
        {
            "kind": kind,
            metric: bench.mean_std(v),
            "tokens_per_s": bench.mean_std([1000.0] * len(v)),
            "runs": [],
            "layer": layer,
        }
        for kind, v in values.items()
    ]
    form = {
        "task": "t",
        "data_label": "d",
        "causal": False,
        "metric": metric,
        "higher_is_better": higher,
        "metric_label": "m",
        "baseline": {"model": "b", metric: 0.5},
        "results": results,
    }
    return {
        "seeds": [0, 1],
        "layer": {"lengths": [256, 1024, 4096], "memory_budget_mib": 2048.0, "time_cap_s": 10.0},
        "forms": {"encoder": form},
    }


@pytest.mark.parametrize(
    "metric, higher, best", [("roc_auc", True, "linear"), ("perplexity", False, "standard")]
)
def test_markdown_marks_the_best_mean_and_counts_failed_runs(metric, higher, best):
    table = bench.markdown(_figures(metric, higher, {"standard": [0.6, None], "linear": [0.7, 0.9]}))
    rows = {line.split(" | ")[0][3:-1]: line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == {"standard", "linear"}
    assert "**" in rows[best] and "**" not in rows[next(k for k in rows if k != best)]
    assert "(1/2 runs; the others diverged)" in rows["standard"]
    assert "12.3 / 4.50 | 250 / 40.0 | - | 1,024 |" in rows["linear"]  # ms / MiB; not measured at 4096


def test_the_docs_table_is_the_one_generated_from_the_committed_results():
    results = BENCH / "results" / "attention_kinds.json"
    if not results.exists():
        pytest.skip("benchmarks/results/attention_kinds.json not written yet")
    figures = json.loads(results.read_text())
    docs = bench.DOCS.read_text()
    i, j = docs.find(bench.START), docs.find(bench.END)
    assert docs[i : j + len(bench.END)] == bench.docs_block(figures), (
        "docs/attention.md §7 is out of date: run python benchmarks/attention_kinds.py --write-docs"
    )
    assert len(figures["kinds"]) == 14 or figures["run"]["mode"] == "quick"


def test_the_default_data_are_the_shared_samples():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    import pandas as pd

    encoder, decoder = bench.FORMS
    assert {"text", encoder.target} <= set(pd.read_csv(encoder.data, nrows=5).columns)
    assert decoder.data.is_file() and "\n\n" in decoder.data.read_text()[:20000]
