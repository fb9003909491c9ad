"""`lm export --hf`: an lm export written as a Hugging Face directory must load with transformers' Auto
classes alone and give lm's logits within 1e-5 (float32, eager attention) on a right-padded batch of varied
lengths; what transformers cannot express is refused with one line naming why."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm.config import ModelConfig  # noqa: E402
from lm.errors import LmError  # noqa: E402
from lm.model import build_model  # noqa: E402
from lm.model.export import export_ensemble, export_model, load_exported  # noqa: E402
from lm.model.hf import interleave_rope_rows  # noqa: E402
from lm.model.hf_export import deinterleave_rope_rows, export_hf  # noqa: E402
from lm.tokenizer import Tokenizer, train_bpe  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the cat and the dog", "it is what it is"] * 5
MAX_LEN = 16
TOL = dict(atol=1e-5, rtol=1e-5)
BERT = dict(norm_position="post", embed_norm=True, norm_eps=1e-12)
GPT2 = dict(norm_position="pre")
LLAMA = dict(
    attention="rotary",
    attention_options={"rope_theta": 500.0},
    positions="none",
    norm="rmsnorm",
    mlp="swiglu",
    bias=False,
    tie_embeddings=False,
    norm_eps=1e-6,
)


pytestmark = pytest.mark.usefixtures("hf_quiet")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    merges = train_bpe(TEXTS, vocab_size=280, special_tokens=SPECIALS)
    return Tokenizer(merges, SPECIALS).save(tmp_path_factory.mktemp("tok"))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """O(1) weights, norm gains around 1 and non-zero biases, so a swapped or mis-transposed tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * r if "norm" in name and name.endswith("weight") else 0.2 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[-1]))
    return model.eval()


def lm_export(root: Path, tokenizer_dir: Path, task: str, zero_head_bias: bool = False, **model) -> Path:
    """A tiny random lm model of `task` written with export_model, as training writes models/."""
    tok = Tokenizer.load(tokenizer_dir)
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=24, **model)
    pad = tok.special_ids["<|pad|>"]
    net = randomize(build_model(cfg, task=task, vocab_size=tok.vocab_size, max_len=MAX_LEN, pad_id=pad))
    if zero_head_bias and getattr(net, "lm_head", None) is not None and net.lm_head.bias is not None:
        torch.nn.init.zeros_(net.lm_head.bias)
    config = {
        "task": task,
        "model": cfg.model_dump(),
        "vocab_size": tok.vocab_size,
        "max_len": MAX_LEN,
        "pad_id": pad,
        "special_ids": tok.special_ids,
        "tokenizer_hash": tok.hash,
        "seed": 0,
        "threshold": 0.5,
    }
    export_model(net, root / "models", config, tokenizer_dir)
    return root / "models"


def batch(model_dir: Path, lengths=(MAX_LEN, 5, 11), cls: bool = False):
    """Right-padded random ids (B, L) and their attention mask; classifier rows start with <|cls|>."""
    _, config = load_exported(model_dir)
    g = torch.Generator().manual_seed(1)
    B, L = len(lengths), max(lengths)
    ids = torch.randint(0, config["vocab_size"], (B, L), generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    if cls:
        ids[:, 0] = config["special_ids"]["<|cls|>"]
    return ids.masked_fill(mask == 0, config["pad_id"]), mask


def load_hf(auto, out: Path):
    hf, info = getattr(transformers, auto).from_pretrained(
        out, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return hf.float().eval()


def assert_same_encoder(hf, lm, ids, mask) -> None:
    """BERT's last hidden states equal lm's trunk output on every real token (not only the pooled CLS row)."""
    with torch.no_grad():
        ref, ours = (
            hf.bert(input_ids=ids, attention_mask=mask).last_hidden_state,
            lm.trunk(ids, mask.bool()).hidden,
        )
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], ref[keep], **TOL)


def assert_same_causal_logits(model_dir: Path, out: Path) -> None:
    lm, _ = load_exported(model_dir)
    hf = load_hf("AutoModelForCausalLM", out)
    ids, mask = batch(model_dir)
    with torch.no_grad():
        ref, ours = hf(input_ids=ids, attention_mask=mask).logits, lm(ids, mask).logits
    assert ref.abs().max() > 1.0  # a meaningful comparison, not two near-zero tensors
    keep = mask.bool()  # padded query positions are don't-care
    torch.testing.assert_close(ours[keep], ref[keep], **TOL)


# ---- outputs match -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_export_hf_bert_classifier_matches_lm(tmp_path, tokenizer_dir, positions):
    model_dir = lm_export(tmp_path, tokenizer_dir, "classify", positions=positions, **BERT)
    report = export_hf(model_dir, tmp_path / "hf")
    assert report.architecture == "BertForSequenceClassification"
    hf = load_hf("AutoModelForSequenceClassification", tmp_path / "hf")
    assert type(hf).__name__ == "BertForSequenceClassification" and hf.config.num_labels == 1
    assert hf.config.problem_type == "multi_label_classification"
    lm, config = load_exported(model_dir)
    assert hf.config.pad_token_id == config["pad_id"]
    ids, mask = batch(model_dir, cls=True)
    with torch.no_grad():
        ref, ours = hf(input_ids=ids, attention_mask=mask).logits, lm(ids, mask).logits
    assert (
        ref.shape == (3, 1) and ref.max() - ref.min() > 1e-3
    )  # rows differ: the context reaches the CLS row
    torch.testing.assert_close(ours, ref[:, 0], **TOL)
    assert_same_encoder(hf, lm, ids, mask)


@pytest.mark.parametrize("tie,positions", [(True, "learned"), (False, "learned"), (True, "sinusoidal")])
def test_export_hf_gpt2_causal_lm_matches_lm(tmp_path, tokenizer_dir, tie, positions):
    model_dir = lm_export(
        tmp_path, tokenizer_dir, "clm", zero_head_bias=True, tie_embeddings=tie, positions=positions, **GPT2
    )
    assert export_hf(model_dir, tmp_path / "hf").architecture == "GPT2LMHeadModel"
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["tie_word_embeddings"] is tie and hf_config["activation_function"] == "gelu"
    assert_same_causal_logits(model_dir, tmp_path / "hf")


@pytest.mark.parametrize("tie", [False, True])
def test_export_hf_llama_causal_lm_matches_lm(tmp_path, tokenizer_dir, tie):
    model_dir = lm_export(tmp_path, tokenizer_dir, "clm", **{**LLAMA, "tie_embeddings": tie})
    assert export_hf(model_dir, tmp_path / "hf").architecture == "LlamaForCausalLM"
    assert_same_causal_logits(model_dir, tmp_path / "hf")


def test_export_hf_deinterleave_undoes_interleave():
    w = torch.randn(12, 5)
    torch.testing.assert_close(deinterleave_rope_rows(interleave_rope_rows(w, 2), 2), w, rtol=0, atol=0)
    assert deinterleave_rope_rows(torch.tensor([0, 10, 1, 11]), 1).tolist() == [0, 1, 10, 11]


def test_export_hf_round_trip_from_a_hugging_face_bert(tmp_path, tokenizer_dir):
    """HF BERT -> lm classifier (init_from, then a trained-looking head) -> lm export -> HF: equal to lm."""
    from lm.model.hf import spec_from_hf_config
    from lm.model.init_from import init_from

    tok = Tokenizer.load(tokenizer_dir)
    cfg = transformers.BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=MAX_LEN,
        type_vocab_size=2,
    )
    randomize(transformers.BertModel(cfg), seed=3).save_pretrained(tmp_path / "bert")
    spec = spec_from_hf_config(json.loads((tmp_path / "bert" / "config.json").read_text()))
    pad = tok.special_ids["<|pad|>"]
    net = build_model(spec.model, task="classify", vocab_size=tok.vocab_size, max_len=MAX_LEN, pad_id=pad)
    init_from(net, tmp_path / "bert", task="classify", vocab_size=tok.vocab_size, tokenizer_hash=None)
    with torch.no_grad():  # the head as fine-tuning leaves it: non-zero biases
        for lin in (net.pooler, net.classifier):
            lin.bias.normal_(0, 0.2)
            lin.weight.normal_(0, 0.5)
    config = {
        "task": "classify",
        "model": spec.model.model_dump(),
        "vocab_size": tok.vocab_size,
        "max_len": MAX_LEN,
        "pad_id": pad,
        "special_ids": tok.special_ids,
        "tokenizer_hash": tok.hash,
        "seed": 0,
    }
    export_model(net.eval(), tmp_path / "models", config, tokenizer_dir)
    export_hf(tmp_path / "models", tmp_path / "hf")
    hf = load_hf("AutoModelForSequenceClassification", tmp_path / "hf")
    ids, mask = batch(tmp_path / "models", cls=True)
    with torch.no_grad():
        ref, ours = hf(input_ids=ids, attention_mask=mask).logits[:, 0], net(ids, mask).logits
    assert ref.max() - ref.min() > 1e-3
    torch.testing.assert_close(ours, ref, **TOL)
    assert_same_encoder(hf, net, ids, mask)


def test_export_hf_tokenizer_loads_with_the_same_ids(tmp_path, tokenizer_dir):
    model_dir = lm_export(tmp_path, tokenizer_dir, "classify", **BERT)
    export_hf(model_dir, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    tok = Tokenizer.load(tokenizer_dir)
    for text in ["the cat sat", "A dog, in the park!", "  spaces\tand\nnewlines", "unseen wörds 123"]:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    # a classifier's rows: AutoTokenizer builds them as lm trained on them (<|cls|> first, truncated at
    # max_len)
    long = "the cat sat on the mat " * 20
    assert hf_tok(long, truncation=True)["input_ids"] == tok.row(tok.encode(long), 16)
    assert hf_tok("the cat")["input_ids"] == [tok.special_ids["<|cls|>"], *tok.encode("the cat")]
    assert hf_tok.pad_token_id == tok.special_ids["<|pad|>"]


def test_export_hf_replaces_an_earlier_export_atomically(tmp_path, tokenizer_dir):
    model_dir = lm_export(tmp_path, tokenizer_dir, "clm", zero_head_bias=True, **GPT2)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "hf" / "stale.bin").write_text("old")
    export_hf(model_dir, tmp_path / "hf")
    names = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert names == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind


# ---- refusals ----------------------------------------------------------------------------------------------


def one_line_error(model_dir: Path, out: Path, match: str) -> str:
    with pytest.raises(LmError, match=match) as err:
        export_hf(model_dir, out)
    assert "\n" not in str(err.value)
    assert not out.exists()
    return str(err.value)


def test_export_hf_refuses_a_pre_norm_encoder(tmp_path, tokenizer_dir):
    model_dir = lm_export(tmp_path, tokenizer_dir, "classify")  # lm's from-scratch default: pre-norm
    msg = one_line_error(model_dir, tmp_path / "hf", r"model.norm_position='pre' \(BERT normalises after")
    assert "model.embed_norm=False" in msg and "does not map to BertForSequenceClassification" in msg


def test_export_hf_refuses_mean_pooling(tmp_path, tokenizer_dir):
    model_dir = lm_export(tmp_path, tokenizer_dir, "classify", pooling="mean", **BERT)
    one_line_error(
        model_dir,
        tmp_path / "hf",
        r"model.pooling='mean' \(BERT's pooler reads the first token; mean pooling",
    )


def test_export_hf_refuses_an_ensemble(tmp_path, tokenizer_dir):
    a = lm_export(tmp_path / "a", tokenizer_dir, "classify", **BERT)
    b = lm_export(tmp_path / "b", tokenizer_dir, "classify", **BERT)
    export_ensemble([a, b], tmp_path / "ens")
    one_line_error(
        tmp_path / "ens", tmp_path / "hf", "ensemble of 2 classifiers .*transformers has no ensemble class"
    )


@pytest.mark.parametrize(
    "task,model,match",
    [
        ("clm", dict(attention="performer"), "model.attention=performer does not map"),
        (
            "clm",
            dict(attention="rotary", norm="rmsnorm", mlp="gelu", positions="none"),
            r"model.mlp='gelu' \(Llama's MLP is SwiGLU\)",
        ),
        ("clm", dict(norm_position="post"), "does not map to GPT2LMHeadModel"),
        ("mlm", {}, "task mlm does not export"),
    ],
)
def test_export_hf_refuses_what_transformers_cannot_express(tmp_path, tokenizer_dir, task, model, match):
    one_line_error(lm_export(tmp_path, tokenizer_dir, task, **model), tmp_path / "hf", match)


def test_export_hf_refuses_a_trained_head_bias(tmp_path, tokenizer_dir):
    model_dir = lm_export(
        tmp_path, tokenizer_dir, "clm", tie_embeddings=False, **GPT2
    )  # random, non-zero bias
    one_line_error(
        model_dir, tmp_path / "hf", "lm_head.bias is non-zero and GPT2LMHeadModel's LM head has no bias"
    )


def test_export_hf_never_replaces_the_model_or_a_foreign_directory(tmp_path, tokenizer_dir):
    model_dir = lm_export(tmp_path, tokenizer_dir, "clm", zero_head_bias=True, **GPT2)
    with pytest.raises(LmError, match="would replace the lm model"):
        export_hf(model_dir, model_dir)
    with pytest.raises(LmError, match="would replace the lm model"):
        export_hf(model_dir, tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("keep me")
    with pytest.raises(LmError, match="exists and is not a Hugging Face export"):
        export_hf(model_dir, tmp_path / "notes")
    assert (tmp_path / "notes" / "a.txt").read_text() == "keep me"


# ---- the command -------------------------------------------------------------------------------------------


def test_export_hf_command_writes_the_directory_and_prints_one_line(tmp_path, tokenizer_dir):
    from typer.testing import CliRunner

    from lm.cli import app

    model_dir = lm_export(tmp_path, tokenizer_dir, "clm", **LLAMA)
    result = CliRunner().invoke(app, ["export", "--model", str(model_dir), "--hf", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == [
        (
            f"wrote {tmp_path / 'hf'} (LlamaForCausalLM: "
            "transformers.AutoModelForCausalLM.from_pretrained loads it)"
        )
    ]
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    refused = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(lm_export(tmp_path / "enc", tokenizer_dir, "classify")),
            "--hf",
            str(tmp_path / "hf2"),
        ],
    )
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert (
        refused.output.startswith("error: ")
        and "does not map to BertForSequenceClassification" in refused.output
    )


def test_export_hf_command_without_hf_runs_the_serving_stage_as_before(monkeypatch):
    from typer.testing import CliRunner

    import lm.cli

    calls = []
    monkeypatch.setattr(lm.cli, "_stage", lambda name, params, **kw: calls.append((name, params, kw)))
    assert CliRunner().invoke(lm.cli.app, ["export"]).exit_code == 0
    assert CliRunner().invoke(lm.cli.app, ["export", "--model", "elsewhere"]).exit_code == 0
    assert calls == [
        ("export", Path("params.yaml"), {}),
        ("export", Path("params.yaml"), {"model_dir": Path("elsewhere")}),
    ]
