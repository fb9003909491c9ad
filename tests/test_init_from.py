"""train.init_from: the trunk of a pretrained lm model (or a Hugging Face GPT-2) loads bit-exactly, the task
head stays new, and a vocabulary or architecture mismatch is refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_params, write_fake_encoded

from lm.config import parse_params
from lm.errors import LmError
from lm.model import build_model
from lm.model.init_from import init_from
from lm.train import loop
from lm.train.step import optimizer_step


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _params(task: str, **overrides):
    base = {"task": task, "train.batch_size": 8, "train.epochs": 1, "train.eval_every": 3, "train.threads": 1}
    return parse_params(tiny_params(**{**base, **overrides}))


def _train(root: Path, params) -> loop.TrainResult:
    return loop.train(
        params,
        encoded_dir=root / "data/encoded",
        split_dir=root / "data/split",
        tokenizer_dir=root / "data/tokenizer",
        out_dir=root / "models",
        reports_dir=root / "reports",
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """An mlm run on the fake corpus: models/ holds its export (tokenizer hash 'fake', vocab 64, max_len
    16)."""
    root = tmp_path_factory.mktemp("mlm")
    write_fake_encoded(root, "mlm", n_docs=80)
    _train(root, _params("mlm"))
    return root / "models"


def _source(model_dir: Path) -> dict[str, torch.Tensor]:
    """The pretrained weights as lm's own loader rebuilds them (the reference)."""
    from lm.model.export import load_exported

    return load_exported(model_dir)[0].state_dict()


def _classifier(**model):
    params = _params("classify", **{f"model.{k}": v for k, v in model.items()})
    return build_model(params.model, task="classify", vocab_size=64, max_len=16, pad_id=61, seed=123)


def test_init_from_loads_the_trunk_bit_exactly_and_keeps_a_new_head(pretrained):
    source = _source(pretrained)
    model = _classifier()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, pretrained, task="classify", vocab_size=64, tokenizer_hash="fake")
    state = model.state_dict()
    trunk = [k for k in state if k.startswith("trunk.")]
    assert trunk and report.loaded == len(trunk) and report.kind == "lm"
    for k in trunk:
        assert torch.equal(state[k], source[k]), k
    head = [k for k in state if not k.startswith("trunk.")]
    assert head and sorted(report.fresh) == sorted(head)
    for k in head:  # the classifier head is the fresh initialisation, untouched
        assert torch.equal(state[k], fresh[k]), k
    assert not torch.equal(state["trunk.tok_emb.weight"], fresh["trunk.tok_emb.weight"])


def test_init_from_same_task_loads_the_head_too(pretrained):
    params = _params("mlm")
    model = build_model(params.model, task="mlm", vocab_size=64, max_len=16, pad_id=61, seed=5)
    report = init_from(model, pretrained, task="mlm", vocab_size=64, tokenizer_hash="fake")
    assert report.fresh == []


def test_init_from_refuses_a_vocabulary_mismatch_with_one_line(pretrained):
    model = _classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LmError) as err:
        init_from(model, pretrained, task="classify", vocab_size=64, tokenizer_hash="another")
    msg = str(err.value)
    assert "\n" not in msg and "vocabulary" in msg and "train.init_from" in msg
    with pytest.raises(LmError, match="vocabulary"):
        init_from(_classifier(), pretrained, task="classify", vocab_size=65, tokenizer_hash="fake")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


def test_init_from_refuses_another_architecture_naming_the_key(pretrained):
    with pytest.raises(LmError, match=r"model\.n_layers=1.*set model\.n_layers to 1"):
        init_from(_classifier(n_layers=2), pretrained, task="classify", vocab_size=64, tokenizer_hash="fake")


def test_init_from_a_shorter_context_keeps_the_first_positions(pretrained):
    params = _params("classify")
    model = build_model(params.model, task="classify", vocab_size=64, max_len=8, pad_id=61)
    init_from(model, pretrained, task="classify", vocab_size=64, tokenizer_hash="fake")
    source = _source(pretrained)["trunk.positions.table.weight"]
    assert torch.equal(model.trunk.positions.table.weight, source[:8])


def test_init_from_missing_or_not_a_model_dir(tmp_path):
    with pytest.raises(LmError, match="not a directory"):
        init_from(_classifier(), tmp_path / "nope", task="classify", vocab_size=64, tokenizer_hash="fake")
    with pytest.raises(LmError, match="no config.json"):
        init_from(_classifier(), tmp_path, task="classify", vocab_size=64, tokenizer_hash="fake")


def test_init_from_in_training_starts_from_the_pretrained_trunk(pretrained, tmp_path, monkeypatch):
    """loop.train with train.init_from: the weights the first step starts from are the pretrained trunk."""
    write_fake_encoded(tmp_path, "classify", n_docs=80)
    seen = {}
    real = optimizer_step

    def spy(**kw):
        if not seen:
            seen.update({k: v.detach().clone() for k, v in kw["model"].state_dict().items()})
        return real(**kw)

    monkeypatch.setattr("lm.train.step.optimizer_step", spy)
    result = _train(tmp_path, _params("classify", **{"train.init_from": str(pretrained)}))
    assert result.steps > 0
    source = _source(pretrained)
    for k, v in seen.items():
        if k.startswith("trunk."):
            assert torch.equal(v, source[k]), k
    config = json.loads((tmp_path / "models" / "config.json").read_text())
    assert config["params"]["train"]["init_from"] == str(pretrained)


def test_init_from_a_hugging_face_gpt2_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lm.model.hf import load_hf_checkpoint

    cfg = transformers.GPT2Config(
        vocab_size=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=32,
        n_inner=64,
        activation_function="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    reference, _ = load_hf_checkpoint(tmp_path / "gpt2")
    params = _params("clm", **{"model.positions": "learned", "model.norm_position": "pre"})
    model = build_model(params.model, task="clm", vocab_size=64, max_len=16, pad_id=61)
    report = init_from(model, tmp_path / "gpt2", task="clm", vocab_size=64, tokenizer_hash="fake")
    assert report.kind == "gpt2"
    ref = reference.state_dict()
    for k, v in model.state_dict().items():
        if k == "trunk.positions.table.weight":
            assert torch.equal(v, ref[k][:16])
        else:
            assert torch.equal(v, ref[k]), k
    with pytest.raises(LmError, match="vocabulary of 64 tokens"):
        init_from(
            build_model(params.model, task="clm", vocab_size=65, max_len=16, pad_id=61),
            tmp_path / "gpt2",
            task="clm",
            vocab_size=65,
            tokenizer_hash="fake",
        )
    shutil.rmtree(tmp_path / "gpt2")


def _encoder(transformers, arch: str):
    """A tiny randomly initialised Hugging Face encoder with the sizes of lm's fake corpus (vocab 64)."""
    common = dict(vocab_size=64, max_position_embeddings=40)
    if arch == "bert":
        cfg = transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            type_vocab_size=2,
            **common,
        )
        return transformers.BertForMaskedLM(cfg)
    if arch == "roberta":
        cfg = transformers.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            pad_token_id=1,
            **common,
        )
        return transformers.RobertaForMaskedLM(cfg)
    cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **common)
    return transformers.DistilBertForMaskedLM(cfg)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_init_from_a_hugging_face_encoder_gives_its_hidden_states(tmp_path, arch):
    """A BERT-family checkpoint's trunk in lm computes the same last hidden states as the Hugging Face
    model."""
    transformers = pytest.importorskip("transformers")
    from lm.model.hf import spec_from_hf_config

    torch.manual_seed(0)
    hf = _encoder(transformers, arch)
    with torch.no_grad():  # non-trivial norms and biases, so a swapped weight would show
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / arch)
    spec = spec_from_hf_config(json.loads((tmp_path / arch / "config.json").read_text()))
    model = build_model(spec.model, task="classify", vocab_size=64, max_len=16, pad_id=1)
    report = init_from(model, tmp_path / arch, task="classify", vocab_size=64, tokenizer_hash=None)
    assert report.kind == arch and sorted(report.fresh) == sorted(
        k for k in model.state_dict() if not k.startswith("trunk.")
    )

    ids = torch.randint(3, 64, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0  # right padding
    ids[1, 8:] = 1
    base = getattr(hf, {"bert": "bert", "roberta": "roberta", "distilbert": "distilbert"}[arch]).eval()
    model.eval()
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model.trunk(ids, mask.bool()).hidden
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=2e-5, rtol=1e-4)


def test_an_encoder_is_refused_as_a_causal_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    from lm.model.hf import load_hf_checkpoint

    _encoder(transformers, "bert").save_pretrained(tmp_path)
    with pytest.raises(LmError, match="not a causal LM; fine-tune it with train.init_from"):
        load_hf_checkpoint(tmp_path)
