"""A pretrained tokenizer (`tokenizer.pretrained`) gives the ids of its reference implementation: Hugging Face
`AutoTokenizer` for WordPiece / byte-level BPE directories, tiktoken for rank files, special tokens included,
on real texts and on generated ones; the pipeline's classifier rows are built as the family was pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED_DATA, tiny_params
from hf_tokenizers import bert_dir, gpt2_dir, roberta_dir, tiktoken_file
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config import parse_params
from lm.errors import LmError
from lm.tokenizer import load_tokenizer
from lm.tokenizer.pretrained import adopt, save_adopted

transformers = pytest.importorskip("transformers")
MAX_LEN = 48
BUILDERS = {"wordpiece": bert_dir, "roberta-bpe": roberta_dir, "gpt2-bpe": gpt2_dir}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: build(root) for kind, build in BUILDERS.items()}


def _reference(directory, **kwargs):
    return transformers.AutoTokenizer.from_pretrained(str(directory), **kwargs)


def _real_texts(limit: int = 200) -> list[str]:
    """Real posts, tweets, stories and Wikipedia lines from ../shared/data (their blemishes included)."""
    import pandas as pd

    texts: list[str] = []
    texts += (
        pd.read_csv(SHARED_DATA / "davidson" / "labeled_tweets.csv", nrows=limit)["text"].astype(str).tolist()
    )
    texts += (
        pd.read_csv(SHARED_DATA / "civil_comments" / "train_head.csv")["comment_text"].astype(str).tolist()
    )
    for name in ("tinystories/validation.txt", "wikitext-2/wiki.valid.tokens"):
        lines = (SHARED_DATA / name).read_text(encoding="utf-8").splitlines()
        texts += [line for line in lines[:limit] if line.strip()]
    return texts


def _assert_same_as_autotokenizer(directory, texts):
    tok = adopt(str(directory))
    ref, ref_as_text = _reference(directory), _reference(directory, split_special_tokens=True)
    for text in texts:
        expected = ref(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        assert tok.row(tok.encode(text, allowed_special="all"), MAX_LEN) == expected, text
        expected = ref_as_text(text, truncation=True, max_length=MAX_LEN)["input_ids"]
        assert tok.row(tok.encode(text, disallowed="as_text"), MAX_LEN) == expected, text
        plain = ref(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, allowed_special="all") == plain, text
        assert tok.encode_batch([text, text], allowed_special="all") == [plain, plain]


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pretrained_tokenizer_ids_equal_autotokenizer_on_real_texts(hf_dirs, kind):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    _assert_same_as_autotokenizer(hf_dirs[kind], _real_texts())


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pretrained_tokenizer_ids_equal_autotokenizer_on_generated_text(hf_dirs, kind):
    specials = st.sampled_from(
        ["[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<mask>", "<|endoftext|>", " ", "\n"]
    )
    text = st.lists(st.one_of(st.text(max_size=40), specials), max_size=6).map("".join)

    @settings(max_examples=150)
    @given(text)
    def check(sample):
        _assert_same_as_autotokenizer(hf_dirs[kind], [sample])

    check()


def test_pretrained_tokenizer_roles_and_rows_follow_the_family(hf_dirs):
    bert, roberta, gpt2 = (adopt(str(hf_dirs[k])) for k in ("wordpiece", "roberta-bpe", "gpt2-bpe"))
    vocab = json.loads((hf_dirs["wordpiece"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert bert.roles["cls"] == vocab["[CLS]"] and bert.roles["sep"] == bert.roles["eot"] == vocab["[SEP]"]
    assert (bert.pad_id, bert.mask_id) == (vocab["[PAD]"], vocab["[MASK]"])
    assert bert.row_prefix == [vocab["[CLS]"]] and bert.row_suffix == [vocab["[SEP]"]]
    row = bert.row(list(range(10, 100)), 8)  # truncation keeps [SEP] at the end, as AutoTokenizer's
    assert row == [vocab["[CLS]"], *range(10, 16), vocab["[SEP]"]]
    assert (roberta.row_prefix, roberta.row_suffix) == ([0], [2]) and roberta.mask_token == "<mask>"
    assert gpt2.row_prefix == [] and gpt2.roles["cls"] is None and gpt2.roles["mask"] is None
    assert (
        gpt2.eot_id
        == gpt2.pad_id
        == json.loads((hf_dirs["gpt2-bpe"] / "tokenizer.json").read_text())["model"]["vocab"]["<|endoftext|>"]
    )
    assert bert.token_str(vocab["[MASK]"]) == "[MASK]"
    assert bert.decode(bert.encode("the quick brown fox")) == "the quick brown fox"


def test_pretrained_tokenizer_tiktoken_file_equals_tiktoken(tmp_path):
    import tiktoken

    from lm.tokenizer.pretokenize import GPT2_PATTERN

    path, ranks = tiktoken_file(tmp_path)
    tok = adopt(str(path))
    ref = tiktoken.Encoding(
        "ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )
    texts = ["The quick brown fox", "a<|endoftext|>b", "", "naïve 数字 🙂\r\n\t  x"]
    if SHARED_DATA.is_dir():
        texts += _real_texts(50)
    for text in texts:
        assert tok.encode(text, disallowed="as_text") == ref.encode_ordinary(text)
        assert tok.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    # lm's missing roles come after tiktoken's ids; <|endoftext|> keeps tiktoken's own id
    assert tok.eot_id == len(ranks) and [tok.pad_id, tok.cls_id, tok.mask_id] == [
        len(ranks) + 1,
        len(ranks) + 2,
        len(ranks) + 3,
    ]
    assert tok.vocab_size == len(ranks) + 4 and tok.row([5, 6], 8) == [tok.cls_id, 5, 6]
    with pytest.raises(LmError, match="special token"):
        tok.encode("a<|endoftext|>b")

    @settings(max_examples=150)
    @given(st.text(max_size=80))
    def check(sample):
        assert tok.encode(sample, disallowed="as_text") == ref.encode_ordinary(sample)

    check()


def test_pretrained_tokenizer_saves_and_reloads_with_its_hash(hf_dirs, tmp_path):
    for source in [*map(str, hf_dirs.values()), str(tiktoken_file(tmp_path)[0])]:
        tok = adopt(source)
        out = save_adopted(tok, tmp_path / "saved" / str(abs(hash(source))))
        again = load_tokenizer(out)
        assert again.hash == tok.hash and again.roles == tok.roles and again.vocab_size == tok.vocab_size
        assert again.encode("The quick brown fox!", allowed_special="all") == tok.encode(
            "The quick brown fox!", allowed_special="all"
        )
    edited = tmp_path / "saved" / str(abs(hash(str(hf_dirs["wordpiece"])))) / "tokenizer_config.json"
    config = json.loads(edited.read_text())
    edited.write_text(json.dumps({**config, "cls_token": "[SEP]"}))
    with pytest.raises(LmError, match="changed since `lm tokenize`"):
        load_tokenizer(edited.parent)


def test_pretrained_tokenizer_bad_sources_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmError, match="has no tokenizer.json") as err:
        adopt(str(tmp_path / "empty"))
    assert "\n" not in str(err.value)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(LmError, match="not a Hugging Face tokenizer.json"):
        adopt(str(tmp_path / "bad.json"))
    with pytest.raises(LmError, match="neither a path nor a tiktoken encoding"):
        adopt("no_such_encoding")


def test_pretrained_tokenizer_name_not_in_cache_says_how_to_provide_it(tmp_path, monkeypatch):
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    tiktoken.registry.ENCODINGS.pop("p50k_base", None)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("tiktoken.load.read_file", offline)
    with pytest.raises(LmError) as err:
        adopt("p50k_base")
    message = str(err.value)
    assert "p50k_base.tiktoken" in message and "tokenizer.pretrained" in message and "\n" not in message


def test_pretrained_tokenizer_through_tokenize_and_encode_stages(hf_dirs, in_tmp):
    """`lm tokenize` adopts the tokenizer, `lm encode` writes classifier rows [CLS] text [SEP] that equal
    AutoTokenizer's, and meta.json records the roles and the content hash."""
    import stages.download
    import stages.encode
    import stages.tokenize
    from lm.data.encoded import Encoded
    from lm.data.raw import RawCorpus

    directory = hf_dirs["wordpiece"]
    params = parse_params(
        tiny_params(**{"data.n_rows": 60, "tokenizer.pretrained": str(directory), "encode.max_len": 24})
    )
    for stage in (stages.download, stages.tokenize, stages.encode):
        stage.run(params)
    enc = Encoded.open("data/encoded")
    tok = load_tokenizer("data/tokenizer")
    assert enc.meta["tokenizer_hash"] == tok.hash == adopt(str(directory)).hash
    assert enc.roles["cls"] == tok.cls_id and enc.pad_id == tok.pad_id
    texts = [
        t for table in RawCorpus.open("data/raw").iter_shards(["text"]) for t in table.column(0).to_pylist()
    ]
    ref = _reference(directory, split_special_tokens=True)
    for i, text in enumerate(texts):
        expected = ref(text, truncation=True, max_length=24)["input_ids"]
        assert enc.tokens[i, : enc.lengths[i]].tolist() == expected
        assert (np.asarray(enc.tokens[i, enc.lengths[i] :]) == tok.pad_id).all()


def test_pretrained_tokenizer_without_a_mask_token_stops_mlm_with_one_line(hf_dirs, in_tmp):
    import stages.download
    import stages.encode
    import stages.tokenize

    params = parse_params(
        tiny_params(**{"task": "mlm", "data.n_rows": 30, "tokenizer.pretrained": str(hf_dirs["gpt2-bpe"])})
    )
    stages.download.run(params)
    stages.tokenize.run(params)
    with pytest.raises(LmError, match="no mask token"):
        stages.encode.run(params)
