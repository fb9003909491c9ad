"""Fine-tuning a Hugging Face checkpoint with `tokenizer.pretrained` + `train.init_from`: the architecture and
the recipe come from the checkpoint and the finetune section, the checkpoint's own tokenizer is required by
content (not by size), and the pipeline runs end to end on it (classify from a BERT, clm from a GPT-2)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_params
from hf_tokenizers import bert_dir, gpt2_dir

from lm.config import ConfigError, ModelConfig, parse_params
from lm.errors import LmError
from lm.model import build_model
from lm.model.init_from import init_from
from lm.tokenizer.pretrained import adopt

transformers = pytest.importorskip("transformers")


def _vocab(directory) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size()


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    """A tiny random BERT saved with its own WordPiece tokenizer in one directory, as on the hub."""
    root = tmp_path_factory.mktemp("bert")
    directory = bert_dir(root)
    cfg = transformers.BertConfig(
        vocab_size=_vocab(directory),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    directory = gpt2_dir(root)
    cfg = transformers.GPT2Config(
        vocab_size=_vocab(directory),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        n_inner=64,
        activation_function="gelu",
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(directory)
    return directory


def _finetune(checkpoint, **overrides):
    """tiny_params with the model section back at lm's defaults (params.yaml's), which mean: the
    checkpoint's."""
    defaults = {f"model.{k}": v for k, v in ModelConfig().model_dump().items()}
    return parse_params(
        tiny_params(
            **{
                **defaults,
                "tokenizer.pretrained": str(checkpoint),
                "train.init_from": str(checkpoint),
                **overrides,
            }
        )
    )


def test_init_from_takes_the_architecture_and_recipe_from_the_checkpoint(bert_checkpoint):
    params = _finetune(bert_checkpoint, **{"model.dropout": 0.0})
    m = params.model
    assert (m.d_model, m.n_layers, m.n_heads, m.d_ff) == (32, 3, 2, 48)
    assert (m.norm_position, m.embed_norm, m.norm_eps, m.positions) == ("post", True, 1e-12, "learned")
    assert m.dropout == 0.0  # a free key set by the user stays
    assert m.attention_dropout == 0.1  # left at lm's default: the checkpoint's
    f = params.finetune
    assert (params.train.lr, params.train.epochs, params.train.ensemble) == (f.lr, f.epochs, 1)
    assert params.train.warmup_fraction == f.warmup_fraction


def test_init_from_an_explicit_conflicting_model_key_is_named(bert_checkpoint):
    with pytest.raises(ConfigError, match=r"model\.n_layers: 4 conflicts with train\.init_from") as err:
        _finetune(bert_checkpoint, **{"model.n_layers": 4})
    assert "\n" not in str(err.value)
    assert _finetune(bert_checkpoint, **{"model.n_layers": 3}).model.n_layers == 3  # agreeing is fine


def test_init_from_a_checkpoint_without_tokenizer_pretrained_names_it(bert_checkpoint):
    with pytest.raises(ConfigError, match=f"set tokenizer.pretrained: {bert_checkpoint}"):
        parse_params(tiny_params(**{"train.init_from": str(bert_checkpoint)}))


def test_init_from_refuses_another_tokenizer_of_the_same_size(bert_checkpoint, tmp_path):
    """Same vocabulary size, other content: a cased WordPiece, and lm's own BPE, are refused by init_from with
    one line naming tokenizer.pretrained; the checkpoint's own tokenizer is accepted."""
    from hf_tokenizers import CORPUS

    from lm.tokenizer import Tokenizer, train_bpe

    vocab = _vocab(bert_checkpoint)
    cased = adopt(str(bert_dir(tmp_path, lowercase=False, vocab_size=vocab)))
    specials = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]
    own_bpe = Tokenizer(train_bpe(CORPUS, vocab, specials), specials)
    params = _finetune(bert_checkpoint)
    for other in (cased, own_bpe):
        assert other.vocab_size == vocab
        model = build_model(params.model, task="classify", vocab_size=vocab, max_len=32, pad_id=0)
        with pytest.raises(LmError, match="tokenizer.pretrained") as err:
            init_from(model, bert_checkpoint, task="classify", vocab_size=vocab, tokenizer_hash=other.hash)
        assert "\n" not in str(err.value) and "another tokenizer" in str(err.value)
    model = build_model(params.model, task="classify", vocab_size=vocab, max_len=32, pad_id=0)
    report = init_from(
        model,
        bert_checkpoint,
        task="classify",
        vocab_size=vocab,
        tokenizer_hash=adopt(str(bert_checkpoint)).hash,
    )
    assert report.kind == "bert" and report.loaded > 0


def test_init_from_a_checkpoint_without_tokenizer_files_checks_the_size(bert_checkpoint, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert_checkpoint / name, bare / name)
    cfg = ModelConfig(**_finetune(bert_checkpoint).model.model_dump())
    model = build_model(cfg, task="classify", vocab_size=_vocab(bert_checkpoint) + 1, max_len=32, pad_id=0)
    with pytest.raises(LmError, match="tokenizer.pretrained"):
        init_from(model, bare, task="classify", vocab_size=_vocab(bert_checkpoint) + 1, tokenizer_hash="x")


def _run(params, *stages):
    for stage in stages:
        stage.run(params)


@pytest.mark.slow
def test_init_from_fine_tunes_a_bert_classifier_end_to_end(bert_checkpoint, in_tmp):
    """download -> tokenize (adopted) -> encode -> split -> train (from the checkpoint) -> evaluate, then
    predict: the exported model has the checkpoint's architecture and tokenizer, and its trunk started from
    the checkpoint."""
    import stages.download
    import stages.encode
    import stages.evaluate
    import stages.split
    import stages.tokenize
    import stages.train
    from lm.infer.predict import load_trained

    params = _finetune(
        bert_checkpoint,
        **{
            "data.n_rows": 200,
            "finetune.epochs": 1,
            "finetune.lr": 1e-3,
            "train.max_steps": 6,
            "eval.baseline": False,
        },
    )
    _run(params, stages.download, stages.tokenize, stages.encode, stages.split, stages.train, stages.evaluate)
    config = json.loads(open("models/config.json").read())
    assert config["model"]["n_layers"] == 3 and config["model"]["norm_position"] == "post"
    assert config["tokenizer_hash"] == adopt(str(bert_checkpoint)).hash
    trained = load_trained("models")
    assert trained.tokenizer.row_prefix == [trained.tokenizer.cls_id]
    texts = ["you are an idiot", "what a lovely day", "naïve café " * 40]
    scores = trained.predict(texts)["score"].tolist()
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert json.loads(open("reports/metrics.json").read())["roc_auc"] is not None
    # out again: the Hugging Face export, read by transformers alone, scores the texts as lm does
    from lm.model.hf_export import export_hf

    export_hf("models", in_tmp / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(in_tmp / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(in_tmp / "hf").eval()
    batch = hf_tok(texts, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        hf_scores = torch.sigmoid(hf(**batch).logits[:, 0])
    assert torch.allclose(hf_scores, torch.tensor(scores), atol=1e-4)  # predict rounds to 4 decimals
    # and `lm serve` builds the same [CLS] text [SEP] rows
    from test_serve import run, serving

    async def score():
        async with serving(in_tmp / "models") as (client, _):
            return await client.post("/v1/score", json={"texts": texts})

    served = run(score())
    assert served.status_code == 200, served.text
    assert served.json()["scores"] == pytest.approx(scores, abs=1e-4)


@pytest.mark.slow
def test_init_from_fine_tunes_a_gpt2_decoder_end_to_end(gpt2_checkpoint, in_tmp):
    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize
    import stages.train
    from lm.infer.predict import load_trained

    params = _finetune(
        gpt2_checkpoint,
        **{
            "task": "clm",
            "data.n_rows": 120,
            "finetune.epochs": 1,
            "train.max_steps": 4,
            "model.pooling": "mean",
        },
    )
    _run(params, stages.download, stages.tokenize, stages.encode, stages.split, stages.train)
    trained = load_trained("models")
    assert trained.config["model"]["n_layers"] == 2 and trained.tokenizer.kind == "hf"
    text = trained.complete("The", max_new_tokens=5, temperature=1.0, top_k=None, top_p=None, seed=0)
    assert text.startswith("The")


@pytest.mark.slow
def test_init_from_continues_masked_lm_training_of_a_bert(bert_checkpoint, in_tmp):
    """task=mlm on a BERT checkpoint: windows start with [CLS], documents are joined by [SEP], masks use
    [MASK] (and random replacements draw from the whole vocabulary, as transformers' collator does); predict
    fills the tokenizer's own mask token."""
    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize
    import stages.train
    from lm.data.encoded import Encoded
    from lm.data.objectives import special_of
    from lm.infer.predict import load_trained

    params = _finetune(
        bert_checkpoint, **{"task": "mlm", "data.n_rows": 120, "finetune.epochs": 1, "train.max_steps": 4}
    )
    _run(params, stages.download, stages.tokenize, stages.encode, stages.split, stages.train)
    enc = Encoded.open("data/encoded")
    tok = adopt(str(bert_checkpoint))
    assert enc.roles["eot"] == tok.roles["sep"] and special_of(enc).n_ordinary == tok.vocab_size
    trained = load_trained("models")
    fills = trained.fills("the quick [MASK] fox", 3)
    assert len(fills) == 1 and len(fills[0][1]) == 3
