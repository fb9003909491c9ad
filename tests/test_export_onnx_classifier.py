"""`lm export`: the ONNX and ONNX-INT8 artifacts of a 2-member ensemble against the eager model (several batch
sizes and lengths, padding included), the artifacts scored with onnxruntime alone (no torch, no lm),
reports/serving.json, the scorers the server uses, and the one-line answer for a model that is not a
classifier."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import SPECIALS, tiny_params, write_fake_encoded, write_params

from lm.config import parse_params
from lm.errors import LmError
from lm.serving.backends import BACKENDS, load_scorer

PAD, CLS = SPECIALS["<|pad|>"], SPECIALS["<|cls|>"]
SHAPES = [(1, 1), (1, 16), (4, 7), (9, 16), (3, 11), (64, 16)]  # the export example is (2, 8)


def _params(task: str = "classify", **overrides):
    return tiny_params(
        **{
            "task": task,
            "train.batch_size": 8,
            "train.epochs": 1,
            "train.eval_every": 3,
            "train.threads": 1,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny 2-member ensemble trained on fake data, exported by the stage (models/, serving/, reports/)."""
    from stages.export import run
    from stages.train import train_here

    root = tmp_path_factory.mktemp("export")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        torch.manual_seed(0)
        write_fake_encoded(root, "classify", n_docs=96)
        params = parse_params(_params(**{"train.ensemble": 2}))
        train_here(params)
        report = run(params)
    finally:
        os.chdir(cwd)
    return root, report


def _batch(batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ids with <|cls|> first, rows right-padded to random lengths (row 0 full)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 60, (batch, length)).astype(np.int64)
    lengths = rng.integers(1, length + 1, batch)
    lengths[0] = length
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids[:, 0] = CLS
    return np.where(mask, ids, PAD), mask


def _scorers(root):
    return {b: load_scorer(root / "models", b, export_dir=root / "serving") for b in BACKENDS}


def test_export_onnx_equals_eager_for_batch_sizes_and_lengths(exported):
    root, _ = exported
    scorers = _scorers(root)
    for seed, (batch, length) in enumerate(SHAPES):
        ids, mask = _batch(batch, length, seed)
        eager = scorers["eager"].score(ids, mask)
        assert eager.shape == (batch,) and eager.dtype == np.float32
        np.testing.assert_allclose(scorers["onnx"].score(ids, mask), eager, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_export_padding_changes_no_score(exported, backend):
    root, _ = exported
    scorer = _scorers(root)[backend]
    ids, mask = _batch(4, 9, seed=7)
    longer_ids = np.concatenate([ids, np.full((4, 5), PAD)], axis=1)
    longer_mask = np.concatenate([mask, np.zeros((4, 5), bool)], axis=1)
    single = np.concatenate([scorer.score(ids[i : i + 1], mask[i : i + 1]) for i in range(4)])
    # int8 quantizes activations with one scale per batch, so its scores move (slightly) with the batch
    atol = 1e-5 if backend == "onnx" else 1e-3
    np.testing.assert_allclose(scorer.score(longer_ids, longer_mask), scorer.score(ids, mask), atol=atol)
    np.testing.assert_allclose(single, scorer.score(ids, mask), atol=atol)  # a row's score is its own


def test_export_artifacts_score_with_onnxruntime_alone(exported):
    root, _ = exported
    ids, mask = _batch(3, 12, seed=3)
    np.save(root / "ids.npy", ids)
    np.save(root / "mask.npy", mask)
    code = (
        "import json, sys, numpy as np, onnxruntime as ort\n"
        "feed = {'input_ids': np.load('ids.npy'), 'attention_mask': np.load('mask.npy')}\n"
        "out = {}\n"
        "for name in ('model.onnx', 'model.int8.onnx'):\n"
        "    session = ort.InferenceSession('serving/' + name, providers=['CPUExecutionProvider'])\n"
        "    out[name] = session.run(None, feed)[0].tolist()\n"
        "out['lm_modules'] = sorted(k for k in sys.modules if k == 'lm' or k.startswith(('lm.', 'stages')))\n"
        "out['torch'] = 'torch' in sys.modules\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["lm_modules"] == [] and out["torch"] is False
    eager = _scorers(root)["eager"].score(ids, mask)
    np.testing.assert_allclose(out["model.onnx"], eager, atol=1e-5)
    np.testing.assert_allclose(out["model.int8.onnx"], eager, atol=0.05)


def test_export_int8_scores_are_close_to_eager(exported):
    root, report = exported
    scorers = _scorers(root)
    diffs = []
    for seed, (batch, length) in enumerate(SHAPES):
        ids, mask = _batch(batch, length, seed)
        diffs.append(np.abs(scorers["onnx-int8"].score(ids, mask) - scorers["eager"].score(ids, mask)).max())
    assert max(diffs) < 0.05
    assert max(diffs) > 0  # it is a different (quantized) graph, not a copy of the fp32 one
    assert report["onnx-int8"]["max_abs_diff"] < 0.05


def test_export_report_has_every_field(exported):
    root, report = exported
    written = json.loads((root / "reports" / "serving.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["task"] == "classify" and written["exported"] and written["members"] == 2
    assert written["n_test"] == len(np.load(root / "data/split/test.npy"))
    assert written["onnx"]["max_abs_diff"] < 1e-5
    for name in ("eager", "onnx", "onnx-int8"):
        row = written[name]
        assert row["size_bytes"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["roc_auc"] is not None and 0 <= row["roc_auc"] <= 1
    for name in ("onnx", "onnx-int8"):
        assert written[name]["roc_auc_delta"] == pytest.approx(
            written[name]["roc_auc"] - written["eager"]["roc_auc"]
        )
    assert written["onnx-int8"]["within_tolerance"] == (abs(written["onnx-int8"]["roc_auc_delta"]) <= 0.005)
    config = json.loads((root / "serving" / "config.json").read_text())
    assert {k: config[k] for k in ("task", "max_len", "pad_id", "cls_id")} == {
        "task": "classify",
        "max_len": 16,
        "pad_id": PAD,
        "cls_id": CLS,
    }
    assert config["threshold"] == 0.5
    assert (root / "serving" / "tokenizer" / "special_tokens.json").exists()


def test_export_load_scorer_backends_agree(exported):
    root, _ = exported
    scorers = _scorers(root)
    ids, mask = _batch(6, 13, seed=11)
    eager = scorers["eager"].score(ids, mask)
    for name, scorer in scorers.items():
        assert scorer.name == name
        got = scorer.score(ids, mask)
        assert got.shape == (6,) and got.dtype == np.float32
        np.testing.assert_allclose(got, eager, atol=1e-5 if name != "onnx-int8" else 0.05)
    with pytest.raises(LmError, match="unknown scoring backend"):
        load_scorer(root / "models", "torchscript")
    with pytest.raises(LmError, match="lm export"):
        load_scorer(root / "models", "onnx-int8", export_dir=root / "nowhere")


def test_export_non_classify_model_says_so_in_one_line(in_tmp):
    from typer.testing import CliRunner

    from lm.cli import app
    from stages.train import train_here

    write_fake_encoded(in_tmp, "clm", n_docs=32)
    raw = _params("clm")
    train_here(parse_params(raw))
    write_params(in_tmp / "params.yaml", raw)
    result = CliRunner().invoke(app, ["export"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "classify only" in lines[0], result.output
    report = json.loads((in_tmp / "reports" / "serving.json").read_text())
    assert report["exported"] is False and "classify only" in report["note"]
    assert json.loads((in_tmp / "serving" / "config.json").read_text())["artifacts"] == {}
    with pytest.raises(LmError, match="classifiers only"):
        load_scorer(in_tmp / "models", "eager")
