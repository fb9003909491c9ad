"""train.init_from from a Hugging Face BERT checkpoint loads its pretrained pooler (`pooler.dense`, dense +
tanh on the CLS row) into lm's classifier pooler: lm's SequenceClassifier then computes the logits of
BertForSequenceClassification (num_labels=1) once the fresh classifier Linear is the same on both sides."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm.config import ModelConfig  # noqa: E402
from lm.model import build_model  # noqa: E402
from lm.model.init_from import init_from  # noqa: E402

V, MAXLEN, PAD = 120, 40, 0
BERT = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=MAXLEN,
    hidden_act="gelu",
    type_vocab_size=2,
    pad_token_id=PAD,
)
LM_BERT = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    dropout=0.0,
    attention_dropout=0.0,
    attention="standard",
    positions="learned",
    norm="layernorm",
    norm_position="post",
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    norm_eps=1e-12,
    embed_norm=True,
    token_type=True,
    pooling="cls",
)


pytestmark = pytest.mark.usefixtures("hf_quiet")


def _pretrained(tmp_path):
    """A BertForPreTraining checkpoint (`bert.` prefix, MLM/NSP heads, a pooler) with non-trivial norms,
    biases and pooler, so a weight left at lm's initialisation would show."""
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**BERT))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif "pooler" in name:
                p.normal_(0.0, 0.3)
    hf.save_pretrained(tmp_path)
    return hf


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, V, (4, 14), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate((14, 9, 5, 12)):  # right padding
        mask[row, length:] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def test_init_from_bert_loads_the_pretrained_pooler(tmp_path):
    hf = _pretrained(tmp_path)
    model = build_model(LM_BERT, task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=3)
    report = init_from(model, tmp_path, task="classify", vocab_size=V, tokenizer_hash=None)
    assert sorted(report.fresh) == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(model.pooler.weight, hf.bert.pooler.dense.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.pooler.bias, hf.bert.pooler.dense.bias, rtol=0, atol=0)


def test_init_from_bert_classifier_gives_bert_for_sequence_classification_logits(tmp_path):
    _pretrained(tmp_path)
    model = build_model(LM_BERT, task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=3).eval()
    init_from(model, tmp_path, task="classify", vocab_size=V, tokenizer_hash=None)
    hf = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path, num_labels=1, problem_type="multi_label_classification"
    ).eval()
    with torch.no_grad():  # both classifiers are fresh: give HF lm's
        hf.classifier.weight.copy_(model.classifier.weight)
        hf.classifier.bias.copy_(model.classifier.bias)
    ids, mask = _batch()
    with torch.no_grad():
        ours = model(ids, mask).logits  # (B,)
        ref = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)  # (B, 1) -> (B,)
    assert ref.std() > 1e-3  # the rows differ: the comparison means something
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_init_from_an_encoder_without_a_pooler_keeps_lm_s_fresh_pooler(tmp_path):
    """BertForMaskedLM saves no pooler: lm's pooler stays at its initialisation and is reported as new."""
    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).save_pretrained(tmp_path)
    model = build_model(LM_BERT, task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=3)
    before = model.pooler.weight.clone()
    report = init_from(model, tmp_path, task="classify", vocab_size=V, tokenizer_hash=None)
    assert sorted(report.fresh) == ["classifier.bias", "classifier.weight", "pooler.bias", "pooler.weight"]
    assert torch.equal(model.pooler.weight, before)
