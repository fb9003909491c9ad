"""End to end: `dvc repro` of a tiny config in a temporary git repository, re-runs limited to what changed,
and the three tasks through `dvc exp run -S task=...`, then `lm predict` / `lm generate` on the results."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import project_repo, run_checked, tiny_params, write_params

pytestmark = pytest.mark.slow


def _sh(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run_checked(args, cwd, env, check)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the tracked project files in a fresh git repository, with tiny params."""
    root = tmp_path_factory.mktemp("pipeline") / "repo"
    return root, project_repo(root, tiny_params(), tmp_path_factory)


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_writes_reports_and_reruns_only_what_changed(repo):
    root, env = repo
    first = _sh(["dvc", "repro"], root, env)
    assert _stages_run(first.stdout) == {
        "download",
        "tokenizer",
        "encode",
        "split",
        "pretrain",
        "train",
        "evaluate",
        "visualize",
        "export",
    }
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    details = json.loads((root / "reports" / "evaluation.json").read_text())
    for key in ("roc_auc", "pr_auc", "precision", "recall", "f1", "accuracy"):
        assert metrics[key] == details[key]
        assert key in details["baseline"]  # TF-IDF + LR on the same rows
    assert metrics["lift"]["roc_auc"] == pytest.approx(metrics["roc_auc"] - metrics["baseline"]["roc_auc"])
    assert json.loads((root / "reports" / "plots" / "roc_baseline.json").read_text())
    assert "final_score" in metrics["bias"] and details["bias"]["per_identity"]
    assert "per_identity" not in metrics["bias"]  # per-identity tables: evaluation.json and the bias plot
    assert {r["identity"] for r in json.loads((root / "reports/plots/bias.json").read_text())} == set(
        details["bias"]["per_identity"]
    )
    for name in ("roc.json", "pr.json", "confusion.json"):
        assert (root / "reports" / "plots" / name).stat().st_size > 0
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (root / "reports" / "figures" / name).stat().st_size > 0
    assert list((root / "reports" / "attention").glob("*.png"))
    assert (root / "reports" / "train" / "curves.png").exists()
    assert (root / "models" / "model.safetensors").exists()

    out = root.parent / "plots-html"
    shown_plots = _sh(["dvc", "plots", "show", "-o", str(out)], root, env)
    assert "failed to load" not in shown_plots.stdout + shown_plots.stderr
    page = (out / "index.html").read_text()
    assert "inlined so `dvc plots diff` renders without network" in page and "Precision-Recall" in page

    again = _sh(["dvc", "repro"], root, env)
    assert _stages_run(again.stdout) == {"download"}  # always runs: it checks the source's fingerprint
    assert "is up to date" in again.stdout + again.stderr

    params = tiny_params(**{"model.n_layers": 2})
    write_params(root / "params.yaml", params)
    changed = _sh(["dvc", "repro"], root, env)
    assert _stages_run(changed.stdout) == {
        "download",
        "pretrain",
        "train",
        "evaluate",
        "visualize",
        "export",
    }  # pretrain: off
    shown = _sh(["dvc", "metrics", "show", "--json"], root, env)
    assert "roc_auc" in shown.stdout
    _sh(["git", "add", "-A"], root, env)
    _sh(["git", "commit", "-qm", "n_layers=2"], root, env)

    texts = ["you are an idiot", "what a lovely day"]
    pred = _sh(["lm", "predict", *texts], root, env)
    assert "score" in pred.stdout and "toxic" in pred.stdout  # the embedded corpus: auto names
    _sh(["lm", "predict", *texts, "-o", "predictions.csv"], root, env)
    _assert_scores_are_the_models(root, texts)


def _assert_scores_are_the_models(root: Path, texts: list[str]) -> None:
    """`lm predict`'s score is the sigmoid of the exported model's logit, computed here directly (this tiny
    model barely learns, so whether it ranks the texts well is checked in test_eval_values.py)."""
    import numpy as np
    import pandas as pd
    import torch

    from lm.infer.predict import load_trained

    table = pd.read_csv(root / "predictions.csv")
    trained = load_trained(root / "models")
    tok = trained.tokenizer
    expected = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([([tok.cls_id] + tok.encode(text))[: trained.max_len]])  # (1, n)
            expected.append(
                float(torch.sigmoid(trained.model(ids, torch.ones_like(ids, dtype=torch.bool)).logits[0]))
            )
    assert table["text"].tolist() == texts
    np.testing.assert_allclose(table["score"].to_numpy(), expected, atol=6e-5)  # written to 4 decimals
    threshold = trained.config["threshold"]
    assert table["label"].tolist() == ["toxic" if p >= threshold else "non-toxic" for p in expected]


def _digest(root: Path, *dirs: str) -> dict[str, str]:
    import hashlib

    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for d in dirs
        for f in sorted((root / d).rglob("*"))
        if f.is_file()
    }


def test_a_params_typo_keeps_models_and_reports_and_pos_weight_off_runs(repo):
    """A typo under `dvc repro` stops with one line naming the key and deletes nothing (outputs are persist);
    `dvc exp run -S train.pos_weight=off` (written unquoted, read by YAML as false) runs."""
    root, env = repo
    if not (root / "dvc.lock").exists():
        pytest.skip("needs the repro test first")
    before = _digest(root, "models", "reports/train")
    good = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(good.replace("  n_heads: 2\n", "  n_heads: 2\n  n_head: 4\n"))
    failed = _sh(["dvc", "repro"], root, env, check=False)
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.n_head: unknown key" in errors[0]
    assert _digest(root, "models", "reports/train") == before
    (root / "params.yaml").write_text(good)
    _sh(["dvc", "exp", "run", "-S", "train.pos_weight=off"], root, env)
    assert (
        "pos_weight: off" in (root / "params.yaml").read_text()
        or "pos_weight: false" in (root / "params.yaml").read_text()
    )
    (root / "params.yaml").write_text(good)


@pytest.mark.parametrize(
    "task, keys",
    [
        ("mlm", ["masked_accuracy", "top5_accuracy", "perplexity"]),
        ("clm", ["perplexity", "bits_per_byte"]),
    ],
)
def test_exp_run_switches_task(repo, task, keys):
    root, env = repo
    if not (root / "dvc.lock").exists():
        pytest.skip("needs the repro test first")  # module order guarantees it in a full run
    _sh(["dvc", "exp", "run", "-S", f"task={task}", "-S", "train.epochs=1"], root, env)
    metrics = json.loads((root / "reports" / "evaluation.json").read_text())
    assert metrics["task"] == task
    for key in keys:
        assert key in metrics and metrics[key] is not None
    assert metrics["baseline"]["model"] == "kneser_ney_3gram"
    assert metrics["baseline"]["n_tokens"] == metrics["n_tokens"]  # the same positions
    shown = json.loads(_sh(["dvc", "exp", "show", "--json"], root, env).stdout)
    assert task in json.dumps(shown)
    table = (root / "reports" / "predictions.md").read_text()
    assert table.strip()
    if task == "clm":
        gen = _sh(["lm", "generate", "The", "--max-new-tokens", "5", "--seed", "1"], root, env)
        assert gen.stdout.startswith("The")
    else:
        pred = _sh(["lm", "predict", "the <|mask|> is good"], root, env)
        assert "prediction" in pred.stdout
    _sh(["git", "checkout", "--", "params.yaml"], root, env)
    _sh(["dvc", "checkout", "-q"], root, env, check=False)
