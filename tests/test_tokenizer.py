"""BPE trainer: exact merges against a brute-force reference, a hand-worked example, chunking invariance."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.config import TokenizerConfig
from lm.errors import LmError
from lm.tokenizer import Tokenizer, learn_merges, limit_bytes, train_bpe, train_tokenizer
from lm.tokenizer.pretokenize import WHITESPACE, count_pretokens, iter_work, pretokenize
from lm.tokenizer.reference import reference_merges, reference_pretoken_counts, reference_train_bpe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]

# Pieces for random corpora: multi-byte letters, digits, whitespace runs (incl. non-ASCII White_Space and
# U+001C, which is *not* whitespace for the GPT-2 pattern), punctuation, contractions, special tokens.
PIECES = [
    "a", "b", "ab", "aa", "the", " the", "The", "é", "ü", "日本", "語", "🙂", "👍🏽", "Привет", "ß",
    "0", "12", "2024", "٣", " ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\r\n", "\u00a0", "\u3000", "\x1c",
    ".", ",", "!", "?!", "...", "'s", "'ll", "'re", "'", "-", "--", "(", ")", "<|", "|>", "<", "|",
    "<|endoftext|>", "<|pad|>", "<|mask|>",
]  # fmt: skip


def random_texts(rng: random.Random, n_texts: int, n_pieces: int) -> list[str]:
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, n_pieces))) for _ in range(n_texts)]


def real_texts() -> dict[str, str]:
    files = {
        "tinystories": DATA / "tinystories" / "validation.txt",
        "wikitext": DATA / "wikitext-2" / "wiki.valid.tokens",
        "comments": DATA / "civil_comments" / "toxic_spans_comments.csv",
    }
    if not all(p.is_file() for p in files.values()):
        pytest.skip(f"real data samples not found under {DATA}")
    return {name: p.read_text(encoding="utf-8") for name, p in files.items()}


# ---------------------------------------------------------------------------------------------- the rule


def test_worked_example_by_hand() -> None:
    """See the module docstring of lm/tokenizer/train.py for the derivation, step by step."""
    texts = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3
    merges = train_bpe(texts, vocab_size=256 + 50 + 1, special_tokens=["<|endoftext|>"])
    expected = [
        (b"s", b"t"),  # es = st = 9; "s" > "e"
        (b"e", b"st"),  # 9
        (b"o", b"w"),  # lo = ow = 7; "o" > "l"
        (b"l", b"ow"),  # 7
        (b"w", b"est"),  # ne = ew = (w, est) = 6; "w" > "n" > "e"
        (b"n", b"e"),  # (n, e) = (e, west) = 6; "n" > "e"
        (b"ne", b"west"),  # 6
        (b"w", b"i"),  # wi = id = (d, est) = 3; "w" > "i" > "d"
        (b"wi", b"d"),  # (wi, d) = (d, est) = 3
        (b"wid", b"est"),  # 3
        (b"low", b"e"),  # (low, e) = (e, r) = 2
        (b"lowe", b"r"),  # 2; then no pair is left: training stops early
    ]
    assert merges == expected
    assert reference_train_bpe(texts, 256 + 50 + 1, ["<|endoftext|>"]) == expected


def test_ties_compare_bytes_first_token_then_second_prefix_smaller() -> None:
    assert learn_merges({b"ab": 1, b"ac": 1}, 1) == [(b"a", b"c")]  # same first token: greater second
    assert learn_merges({b"ba": 1, b"ca": 1}, 1) == [(b"c", b"a")]  # greater first token wins before second
    # after (a, b): (ab, z) and (a, q) tie at 3; b"a" is a prefix of b"ab", so b"a" < b"ab"
    counts = {b"ab": 10, b"abz": 3, b"aq": 3}
    assert learn_merges(counts, 2) == [(b"a", b"b"), (b"ab", b"z")] == reference_merges(counts, 2)
    # same on the second token: (x, ab) beats (x, a)
    counts = {b"ab": 10, b"xab": 3, b"xa": 3}
    assert learn_merges(counts, 2) == [(b"a", b"b"), (b"x", b"ab")] == reference_merges(counts, 2)


def test_overlapping_runs_merge_left_to_right() -> None:
    counts = {b"aaaaa": 3, b"aaa": 2, b"baaab": 1}
    merges = learn_merges(counts, 10)
    assert merges == reference_merges(counts, 10)
    assert merges[0] == (b"a", b"a")


@pytest.mark.parametrize("seed", range(40))
def test_random_corpora_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    texts = random_texts(rng, n_texts=rng.randint(1, 30), n_pieces=rng.randint(1, 40))
    specials = rng.sample(SPECIALS, rng.randint(0, 4))
    vocab_size = 256 + len(specials) + rng.randint(0, 120)
    assert train_bpe(texts, vocab_size, specials) == reference_train_bpe(texts, vocab_size, specials)


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), min_size=1, max_size=8),
    extra=st.integers(0, 60),
)
def test_fuzzed_corpora_match_brute_force(texts: list[str], extra: int) -> None:
    assert train_bpe(texts, 260 + extra, SPECIALS) == reference_train_bpe(texts, 260 + extra, SPECIALS)


@pytest.mark.parametrize("seed", range(8))
def test_chunking_never_changes_counts(seed: int) -> None:
    """Tiny chunks force many safe cuts; the counts must equal the plain whole-text pre-tokenization."""
    rng = random.Random(100 + seed)
    texts = random_texts(rng, n_texts=5, n_pieces=200)
    specials = rng.sample(SPECIALS, rng.randint(0, 3))
    expected = reference_pretoken_counts(texts, specials)
    for size in (1, 3, 17, 1 << 20):
        counts = count_pretokens(iter_work(texts, specials, size=size))
        assert Counter({k.encode(): v for k, v in counts.items()}) == expected


def test_special_tokens_are_never_merged_into() -> None:
    texts = ["x<|endoftext|>x<|endoftext|>x<|pad|>y" * 20, "<|mask|><|mask|>"]
    merges = train_bpe(texts, 256 + 4 + 30, SPECIALS)
    tokens = {a + b for a, b in merges}
    assert not any(b"<|" in t or b"|>" in t for t in tokens)
    assert (b"x", b"y") not in merges  # "x<|pad|>y": the x and y are not adjacent
    # The longest special token wins where several match at one place.
    assert reference_pretoken_counts(["a<|x|>yb"], ["<|x|>", "<|x|>y"]) == Counter({b"a": 1, b"b": 1})
    assert count_pretokens(iter_work(["a<|x|>yb"], ["<|x|>", "<|x|>y"])) == {"a": 1, "b": 1}


def test_workers_give_identical_merges() -> None:
    rng = random.Random(3)
    texts = random_texts(rng, n_texts=400, n_pieces=60)
    one = train_bpe(texts, 700, SPECIALS, workers=1)
    # small chunks so that both processes get work
    two = learn_merges(count_pretokens(iter_work(texts, SPECIALS, size=2000), workers=2), 700 - 260)
    assert one == two
    assert train_bpe(texts, 700, SPECIALS, workers=2) == one


def test_progress_reporting_changes_nothing() -> None:
    rng = random.Random(11)
    texts = random_texts(rng, n_texts=50, n_pieces=50)
    assert train_bpe(texts, 400, SPECIALS, progress=True) == train_bpe(texts, 400, SPECIALS)
    assert train_bpe(["".join(texts)], 400, SPECIALS, progress=True) == reference_train_bpe(
        ["".join(texts)], 400, SPECIALS
    )


def test_whitespace_set_is_regex_backslash_s() -> None:
    every = "".join(chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i < 0xE000)
    assert "".join(regex.findall(r"\s", every)) == WHITESPACE


def test_pretokenize_gpt2_examples() -> None:
    assert pretokenize("Hello world") == ["Hello", " world"]
    assert pretokenize("it's  12 ok!!\n\n x") == ["it", "'s", " ", " 12", " ok", "!!", "\n\n", " x"]


# ---------------------------------------------------------------------------------------------- arguments


def test_bad_arguments_raise_lm_error() -> None:
    with pytest.raises(LmError, match="vocab_size=200"):
        train_bpe(["abc"], 200, SPECIALS)
    with pytest.raises(LmError, match="duplicates"):
        train_bpe(["abc"], 300, ["<|a|>", "<|a|>"])


def test_train_tokenizer_from_config_caps_bytes() -> None:
    texts = ["hello world " * 50, "ünïcode " * 50]
    assert "".join(limit_bytes(texts, 604)) == texts[0] + "ün"  # 600 + ü n (3 bytes); half an ï is dropped
    cfg = TokenizerConfig(vocab_size=300, max_train_bytes=100)
    tok = train_tokenizer(texts, cfg)
    assert isinstance(tok, Tokenizer) and tok.special_tokens == cfg.special_tokens
    assert tok.merges == reference_train_bpe([texts[0][:100]], 300, cfg.special_tokens)


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("name", ["tinystories", "wikitext", "comments"])
def test_real_slices_match_brute_force(name: str) -> None:
    text = real_texts()[name]
    start = len(text) // 3
    sample = text[start : start + 12_000]
    assert train_bpe([sample], 256 + 4 + 150, SPECIALS) == reference_train_bpe(
        [sample], 256 + 4 + 150, SPECIALS
    )


def test_tinystories_vocab_1000() -> None:
    text = real_texts()["tinystories"]
    merges = train_bpe([text], 1000, SPECIALS)
    assert len(merges) == 1000 - 256 - 4
    # the same merges from the brute-force merge loop on the fast counts' prefix
    counts = reference_pretoken_counts([text], SPECIALS)
    assert count_pretokens(iter_work([text], SPECIALS)) == {k.decode(): v for k, v in counts.items()}
    assert reference_merges(counts, 40) == merges[:40]
    tok = Tokenizer(merges, SPECIALS)
    story = text[:2000]
    ids = tok.encode(story)
    assert tok.decode(ids) == story
    assert len(ids) < len(story.encode()) / 2.5  # ~2.9 bytes per token with 740 merges
