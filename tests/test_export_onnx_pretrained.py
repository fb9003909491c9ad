"""`lm export` of an encoder fine-tuned from a pretrained Hugging Face checkpoint (BERT-family: post-norm,
token-type row, embedding LayerNorm, [CLS] x [SEP] rows): model.onnx equals eager and model.int8.onnx stays
close, on varied batch sizes and lengths with right padding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm.model import build_model
from lm.model.init_from import init_from
from lm.serving.backends import EagerScorer, OnnxScorer
from lm.serving.export import export_onnx, quantize_int8

transformers = pytest.importorskip("transformers")

V, MAX_LEN, PAD, CLS, SEP = 64, 16, 1, 2, 3


def _bert_classifier(tmp_path, arch: str):
    """A tiny random BERT / DistilBERT saved with save_pretrained, loaded into an lm classifier by
    init_from."""
    from lm.model.hf import spec_from_hf_config

    torch.manual_seed(0)
    common = dict(vocab_size=V, max_position_embeddings=40, pad_token_id=PAD)
    if arch == "bert":
        cfg = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, **common
        )
        hf = transformers.BertForMaskedLM(cfg)
    else:
        cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **common)
        hf = transformers.DistilBertForMaskedLM(cfg)
    hf.save_pretrained(tmp_path / arch)
    spec = spec_from_hf_config(json.loads((tmp_path / arch / "config.json").read_text()))
    model = build_model(spec.model, task="classify", vocab_size=V, max_len=MAX_LEN, pad_id=PAD)
    init_from(model, tmp_path / arch, task="classify", vocab_size=V, tokenizer_hash=None)
    model.eval()
    config = {
        "vocab_size": V,
        "pad_id": PAD,
        "max_len": MAX_LEN,
        "roles": {"cls": CLS, "sep": SEP, "pad": PAD},
    }
    return model, config


def _rows(batch: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] tokens [SEP], right-padded to random lengths (row 0 full)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, V, (batch, length)).astype(np.int64)
    lengths = rng.integers(2, length + 1, batch) if length > 1 else np.ones(batch, dtype=np.int64)
    lengths[0] = length
    mask = np.arange(length)[None, :] < lengths[:, None]
    ids[:, 0] = CLS
    ids[np.arange(batch), lengths - 1] = np.where(lengths > 1, SEP, CLS)
    return np.where(mask, ids, PAD), mask


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_export_onnx_of_a_fine_tuned_pretrained_encoder_equals_eager(tmp_path, arch):
    model, config = _bert_classifier(tmp_path, arch)
    export_onnx(model, config, tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    eager = EagerScorer(model)
    onnx = OnnxScorer(tmp_path / "model.onnx", "onnx")
    int8 = OnnxScorer(tmp_path / "model.int8.onnx", "onnx-int8")
    worst = 0.0
    for seed, (batch, length) in enumerate([(1, 1), (1, MAX_LEN), (5, 9), (32, MAX_LEN), (7, 3)]):
        ids, mask = _rows(batch, length, seed)
        expected = eager.score(ids, mask)
        np.testing.assert_allclose(onnx.score(ids, mask), expected, atol=1e-5, rtol=0)
        worst = max(worst, float(np.abs(int8.score(ids, mask) - expected).max()))
    assert 0 < worst < 0.05  # quantized (not a copy of the fp32 graph), and close
    assert (tmp_path / "model.int8.onnx").stat().st_size < 0.6 * (tmp_path / "model.onnx").stat().st_size
