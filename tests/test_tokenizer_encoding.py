"""Tokenizer: tiktoken ids == Hugging Face ids, round trips, special tokens, decoding, files."""

from __future__ import annotations

import itertools
import json
import pickle
import random
import re
from pathlib import Path

import pytest
import tokenizers
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lm.errors import LmError
from lm.tokenizer import Tokenizer, train_bpe
from lm.tokenizer.hf_export import bytes_to_unicode, from_unicode, to_unicode

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]

CORPUS_PIECES = [
    " the", " cat", " sat", " on", " mat", "The", " dog", "'s", " don't", " it's", " we're", "!", ".", ",",
    " 12", " 2024", " 3.14", "\n", "\n\n", "  ", "\t", " café", " naïve", " 日本語", " テスト", " Привет",
    " мир", " 🙂", " 👍🏽", " ñandú", " straße", " <|endoftext|>", "<|pad|>", " (x)", " --", " ...",
]  # fmt: skip
TRICKY = [
    "",
    " ",
    "Hello world",
    "Hello  world\n\n\n  indented\ttabs\r\nwindows",
    "it's we're I'll they've she'd 'quoted' ''",
    "12345 3.14159 1,000,000 ٣٤٥ ①②",
    "naïve café 日本語のテキスト Привет, мир! ñandú straße",
    "emoji 🙂👍🏽🏳️‍🌈 family 👨‍👩‍👧 flags 🇫🇷",
    "   leading and trailing   ",
    "\u00a0nbsp\u3000ideographic\u2028line\x1cfile-separator\x0bvt\x85nel",
    "a<|endoftext|>b<|pad|><|cls|>c<|mask|>",
    "<|endoftext|><|endoftext|>",
    "<|endoftext|  <|pad  |mask|>",
    "\x00\x01\x7f control \ufeff bom \U0001f600 \U000e0001",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    letters = "etaoinshrdlucmfwypvbgkqjxzéüñ日本語🙂"
    words = [" " + "".join(rng.choice(letters) for _ in range(rng.randint(1, 8))) for _ in range(400)]
    pieces = CORPUS_PIECES + words
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    return Tokenizer(train_bpe(texts, 256 + 4 + 500, SPECIALS), SPECIALS)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf(saved: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(saved / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_fast(saved: Path) -> transformers.PreTrainedTokenizerFast:
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved / "tokenizer.json"))


# Text that stresses the pre-tokenizer: mixes scripts, digits, whitespace kinds and special-token shapes.
ALPHABET = st.sampled_from(
    list("ab éü日🙂0٣ \n\t\r'.-<|>!\u00a0\u3000\x1c\u2028") + SPECIALS + [" the", "'s", "  "]
)
TEXTS = st.one_of(st.text(max_size=80), st.lists(ALPHABET, max_size=40).map("".join))
HYPOTHESIS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---------------------------------------------------------------------------------------------- ids


def test_vocab_layout(tok: Tokenizer) -> None:
    assert tok.vocab_size == 256 + len(tok.merges) + 4 == 760
    assert [tok.token_bytes(i) for i in range(256)] == [bytes([i]) for i in range(256)]
    for k, (a, b) in enumerate(tok.merges):
        assert tok.token_bytes(256 + k) == a + b
    assert (tok.eot_id, tok.pad_id, tok.cls_id, tok.mask_id) == (756, 757, 758, 759)
    assert tok.special_ids == {s: 756 + i for i, s in enumerate(SPECIALS)}


@pytest.mark.parametrize("text", TRICKY)
def test_tiktoken_ids_equal_hugging_face(
    tok: Tokenizer, hf: tokenizers.Tokenizer, hf_fast, text: str
) -> None:
    ids = tok.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ids
    assert hf_fast(text)["input_ids"] == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == text


@HYPOTHESIS
@given(text=TEXTS)
def test_tiktoken_ids_equal_hugging_face_fuzzed(tok: Tokenizer, hf: tokenizers.Tokenizer, text: str) -> None:
    ids = tok.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ids
    assert tok.decode(ids) == text


@HYPOTHESIS
@given(text=TEXTS)
def test_round_trip_any_unicode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, disallowed="as_text")
    assert tok.decode(ids) == text
    assert all(i < 256 + len(tok.merges) for i in ids)  # as text: no special ids


def test_encoding_applies_merges_by_rank(tok: Tokenizer) -> None:
    """Brute-force BPE encoding (apply the lowest-rank merge present until none applies) gives the same
    ids."""
    from lm.tokenizer.pretokenize import pretokenize

    rank = {pair: k for k, pair in enumerate(tok.merges)}
    ids_of = {tok.token_bytes(i): i for i in range(256 + len(tok.merges))}
    text = "The cat's café sat on 12 mats; naïve 日本語 🙂!\n\n  x"
    expected: list[int] = []
    for piece in pretokenize(text):
        parts = [bytes([b]) for b in piece.encode()]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: rank.get((parts[i], parts[i + 1]), 1 << 30))
            if (parts[best], parts[best + 1]) not in rank:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
        expected += [ids_of[p] for p in parts]
    assert tok.encode(text) == expected


# ---------------------------------------------------------------------------------------------- specials


def test_special_tokens_are_never_split(tok: Tokenizer) -> None:
    text = "a<|endoftext|>b<|pad|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("a") + [tok.eot_id] + tok.encode("b") + [tok.pad_id]
    assert tok.encode(text, allowed_special={"<|endoftext|>", "<|pad|>"}) == ids
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"}, disallowed="as_text")
    assert only_eot == tok.encode("a") + [tok.eot_id] + tok.encode("b<|pad|>", disallowed="as_text")
    as_text = tok.encode(text, disallowed="as_text")
    assert tok.eot_id not in as_text and tok.decode(as_text) == text


def test_disallowed_special_raises_with_the_token_named(tok: Tokenizer) -> None:
    with pytest.raises(LmError, match=r"special token '<\|endoftext\|>'.*allowed_special"):
        tok.encode("hi <|endoftext|>")
    with pytest.raises(LmError, match=r"'<\|pad\|>'"):
        tok.encode("<|endoftext|><|pad|>", allowed_special={"<|endoftext|>"})
    with pytest.raises(LmError, match="unknown special"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(LmError, match="disallowed"):
        tok.encode("x", disallowed="ignore")  # type: ignore[arg-type]
    with pytest.raises(LmError, match="special token"):
        tok.encode_batch(["fine", "not <|mask|> fine"])


def test_longest_special_token_wins(tmp_path: Path) -> None:
    specials = ["<|a|>", "<|a|>b", "<|endoftext|>"]
    tok = Tokenizer([(b"a", b"b")], specials)
    ids = tok.encode("x<|a|>b<|a|>ab", allowed_special="all")
    assert ids == [ord("x"), tok.special_ids["<|a|>b"], tok.special_ids["<|a|>"], 256]
    assert tok.encode_batch(["x<|a|>b<|a|>ab"] * 3, allowed_special="all") == [ids] * 3
    hf = tokenizers.Tokenizer.from_file(str(tok.save(tmp_path) / "tokenizer.json"))
    assert hf.encode("x<|a|>b<|a|>ab").ids == ids


# ---------------------------------------------------------------------------------------------- batch, stream


def test_batch_and_stream_equal_single(tok: Tokenizer) -> None:
    texts = [t for t in TRICKY if "<|" not in t] * 5
    single = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == single
    assert tok.encode_batch(texts, num_threads=1) == single
    assert list(tok.encode_documents(iter(texts), batch_size=4)) == single
    special = [tok.encode(t, allowed_special="all") for t in TRICKY]
    assert tok.encode_batch(TRICKY, allowed_special="all") == special


def test_threaded_batch_equals_single(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    import lm.tokenizer.encoding as encoding

    monkeypatch.setattr(encoding, "THREAD_CHARS", 50)  # many slices, so that the thread pool is used
    texts = [t for t in TRICKY if "<|" not in t] * 20
    assert tok.encode_batch(texts, num_threads=3) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(TRICKY * 5, allowed_special="all", num_threads=2) == [
        tok.encode(t, allowed_special="all") for t in TRICKY * 5
    ]


def test_stream_is_lazy(tok: Tokenizer) -> None:
    endless = (f"text number {i}" for i in itertools.count())
    first = list(itertools.islice(tok.encode_documents(endless, batch_size=8), 3))
    assert first == [tok.encode(f"text number {i}") for i in range(3)]


# ---------------------------------------------------------------------------------------------- decoding


def test_decode_invalid_utf8_gives_replacement_chars(tok: Tokenizer) -> None:
    assert tok.decode([0xFF]) == "\ufffd"
    assert tok.decode([ord("a"), 0xC3]) == "a\ufffd"  # truncated 2-byte sequence
    snowman = list("☃".encode())
    assert tok.decode(snowman[:2] + [ord("x")]) == "\ufffdx"
    assert tok.decode(snowman) == "☃"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 759), max_size=30))
def test_decode_never_raises(tok: Tokenizer, ids: list[int]) -> None:
    raw = b"".join(tok.token_bytes(i) for i in ids)
    assert tok.decode(ids) == raw.decode("utf-8", errors="replace")


def test_decode_rejects_ids_outside_vocab_and_skips_specials(tok: Tokenizer) -> None:
    with pytest.raises(LmError, match="760 is outside"):
        tok.decode([1, 760])
    with pytest.raises(LmError, match="outside"):
        tok.decode([-1])
    ids = tok.encode("a<|pad|>b", allowed_special="all")
    assert tok.decode(ids, skip_special=True) == "ab"
    import numpy as np

    assert tok.decode(np.array(ids, dtype=np.uint16)) == "a<|pad|>b"


def test_token_str_is_printable(tok: Tokenizer) -> None:
    assert tok.token_str(ord("\n")) == "\\n"
    assert tok.token_str(ord(" ")) == " "
    assert tok.token_str(0xC3) == "\\xc3"
    assert tok.token_str(tok.eot_id) == "<|endoftext|>"
    assert all(tok.token_str(i).isprintable() for i in range(tok.vocab_size))


# ---------------------------------------------------------------------------------------------- identity


def test_hash_is_stable_and_content_based(tok: Tokenizer) -> None:
    small = Tokenizer([(b"a", b"b"), (b"ab", b"c")], ["<|endoftext|>"])
    assert small.hash == "1550bf8daeb0af490d08b0d6ef818028fda01a01dc9070a45fbe56ec9dfc84b2"
    assert Tokenizer([(b"a", b"b")], ["<|endoftext|>"]).hash != small.hash
    assert Tokenizer([(b"a", b"b"), (b"ab", b"c")], ["<|pad|>"]).hash != small.hash
    assert pickle.loads(pickle.dumps(tok)) == tok
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.encode("the cat 🙂") == tok.encode("the cat 🙂")


def test_invalid_merges_rejected() -> None:
    with pytest.raises(LmError, match="no earlier merge"):
        Tokenizer([(b"ab", b"c")], [])
    with pytest.raises(LmError, match="already exists"):
        Tokenizer([(b"a", b"b"), (b"a", b"b")], [])
    with pytest.raises(LmError, match="duplicates"):
        Tokenizer([], ["<|x|>", "<|x|>"])
    with pytest.raises(LmError, match=re.escape("no special token '<|cls|>'")):
        _ = Tokenizer([], ["<|endoftext|>"]).cls_id
    with pytest.raises(LmError, match="equals a learned token"):
        Tokenizer([(b"a", b"b")], ["ab"])


def test_special_spelled_like_a_byte_level_token_cannot_be_saved(tmp_path: Path) -> None:
    tok = Tokenizer([(b" ", b"x")], ["Ġx"])  # vocab.json spells b" x" as "Ġx"
    with pytest.raises(LmError, match="spelled like the byte-level form"):
        tok.save(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---------------------------------------------------------------------------------------------- files


def test_gpt2_byte_mapping() -> None:
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(from_unicode(to_unicode(bytes([b]))) == bytes([b]) for b in range(256))


def test_save_load_round_trip(tok: Tokenizer, saved: Path) -> None:
    names = {p.name for p in saved.iterdir()}
    assert {
        "vocab.json",
        "merges.txt",
        "special_tokens.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    lines = (saved / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(tok.merges)
    assert lines[1] == f"{to_unicode(tok.merges[0][0])} {to_unicode(tok.merges[0][1])}"
    vocab = json.loads((saved / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(tok.vocab_size)) and vocab["<|pad|>"] == tok.pad_id
    loaded = Tokenizer.load(saved)
    assert loaded == tok and loaded.hash == tok.hash
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(TRICKY[6]) == tok.encode(TRICKY[6])


def test_auto_tokenizer_knows_special_roles(tok: Tokenizer, saved: Path) -> None:
    auto = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert (auto.pad_token_id, auto.eos_token_id, auto.cls_token_id, auto.mask_token_id) == (
        tok.pad_id,
        tok.eot_id,
        tok.cls_id,
        tok.mask_id,
    )
    assert auto(TRICKY[10])["input_ids"] == tok.encode(TRICKY[10], allowed_special="all")


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt", "special_tokens.json"])
def test_load_missing_file_is_a_clear_error(tok: Tokenizer, tmp_path: Path, missing: str) -> None:
    tok.save(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(LmError, match=f"{missing}: tokenizer file not found"):
        Tokenizer.load(tmp_path)


def test_load_errors(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(LmError, match="directory not found"):
        Tokenizer.load(tmp_path / "absent")
    other = Tokenizer(tok.merges[:-1], SPECIALS)
    tok.save(tmp_path)
    other_vocab = (other.save(tmp_path / "other") / "vocab.json").read_text(encoding="utf-8")
    (tmp_path / "vocab.json").write_text(other_vocab, encoding="utf-8")
    with pytest.raises(LmError, match="vocab.json: does not match"):
        Tokenizer.load(tmp_path)
    tok.save(tmp_path)
    with (tmp_path / "merges.txt").open("a", encoding="utf-8") as f:
        f.write("only-one-part\n")
    with pytest.raises(LmError, match=r"merges.txt:\d+: not a GPT-2 merge line"):
        Tokenizer.load(tmp_path)


# ---------------------------------------------------------------------------------------------- real data


def test_real_text_ids_equal_hugging_face(tmp_path: Path) -> None:
    files = [DATA / "tinystories" / "validation.txt", DATA / "civil_comments" / "toxic_spans_comments.csv"]
    if not all(p.is_file() for p in files):
        pytest.skip(f"real data samples not found under {DATA}")
    texts = [p.read_text(encoding="utf-8") for p in files]
    tok = Tokenizer(train_bpe([t[:300_000] for t in texts], 1500, SPECIALS), SPECIALS)
    hf = tokenizers.Tokenizer.from_file(str(tok.save(tmp_path) / "tokenizer.json"))
    lines = [line for t in texts for line in t[300_000:500_000].splitlines(keepends=True)]
    ours = tok.encode_batch(lines, disallowed="as_text")
    assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == ours
    assert "".join(tok.decode(ids) for ids in ours) == "".join(lines)
