"""encode_stream / encode_file: one text given in pieces encodes exactly as `encode` of the whole text.

Pieces are cut everywhere (every line, every character, random places) and re-cut inside encode_stream with a
tiny `chunk_chars`, so that its cut points land next to newline runs, CRLF, special tokens and multi-byte
text. Also: the tokenizer's files get the normal permissions of the umask.
"""

from __future__ import annotations

import io
import os
import random
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lm.errors import LmError
from lm.tokenizer import Tokenizer, train_bpe

# "<|a|>" is a prefix of "<|a|> b" (the longest wins) and "<|a|> b" holds a space, where a cut could fall.
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|a|>", "<|a|> b"]
ATOMS = [
    "x", "y", " the", " cat", "'s", "'ll", " don't", "12", " 3.14", ".", ",", "!!", "\n", "\n\n", "\n\n\n",
    "\r\n", "\r\n\r\n", "\r", "  ", "   ", "\t", " \n", "\u00a0", "\u3000", "\u2028", "\x85", "e\u0301",
    " café", " 日本語", "🙂", "👍🏽", " ٣٤٥", "<|endoftext|>", "<|pad|>", "<|a|>", "<|a|> b", "<|a|>b", "<|",
]  # fmt: skip
NEWLINES = "x\n\n\ny\n\n\n\nz \n \n\t\nw\n\n"
CRLF = "first line\r\nsecond\r\n\r\n\r\nthird \r\n\r\n  indented\r\rlone cr\r\n\r\n"
UNICODE = "naïve café\u00a0日本語のテキスト\u3000Привет,\u2028мир! e\u0301 🙂👍🏽🏳️‍🌈 ٣٤٥ ①② \x85end\ufeff"
SPECIAL_TEXT = "a<|endoftext|>\n\n<|pad|> x<|a|> b<|a|>b <|a|>  <|endoftext|><|endoftext|>\r\n<|pad|>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A tiny vocabulary that has merges for newline runs, CRLF, spaces and words (so they matter)."""
    rng = random.Random(0)
    texts = ["".join(rng.choice(ATOMS) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    return Tokenizer(train_bpe(texts, 256 + len(SPECIALS) + 150, SPECIALS), SPECIALS)


def streamed(tok: Tokenizer, pieces, **kwargs) -> list[int]:  # type: ignore[no-untyped-def]
    return [i for ids in tok.encode_stream(pieces, **kwargs) for i in ids]


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def test_stream_lines_keep_newline_runs(tok: Tokenizer) -> None:
    lines = "x\n\n\ny".splitlines(keepends=True)  # the example: "x\n", "\n", "\n", "y"
    assert streamed(tok, lines) == tok.encode("x\n\n\ny")
    assert streamed(tok, NEWLINES.splitlines(keepends=True)) == tok.encode(NEWLINES)
    for size in range(1, 6):
        assert streamed(tok, NEWLINES.splitlines(keepends=True), chunk_chars=size) == tok.encode(NEWLINES)


def test_stream_crlf_lines_and_cuts_inside_crlf(tok: Tokenizer) -> None:
    lines = list(io.StringIO(CRLF, newline=""))  # a file's lines with their own line ends
    assert "".join(lines) == CRLF and "second\r\n" in lines
    assert streamed(tok, lines) == tok.encode(CRLF)
    for cut in range(len(CRLF) + 1):  # two pieces, the edge everywhere (between "\r" and "\n" too)
        assert streamed(tok, [CRLF[:cut], CRLF[cut:]], chunk_chars=3) == tok.encode(CRLF), cut


def test_stream_crlf_file(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(CRLF.encode())
    for size in (1, 2, 5, 1000):
        assert [i for ids in tok.encode_file(path, chunk_chars=size) for i in ids] == tok.encode(CRLF)
    path.write_bytes(b"ok\xff")
    with pytest.raises(LmError, match="crlf.txt: not valid UTF-8"):
        list(tok.encode_file(path))


def test_stream_special_tokens_at_chunk_edges(tok: Tokenizer) -> None:
    chars = list(SPECIAL_TEXT)  # one character per piece: specials arrive split
    for size in range(1, 9):
        assert streamed(tok, chars, chunk_chars=size, allowed_special="all") == tok.encode(
            SPECIAL_TEXT, allowed_special="all"
        ), size
        assert streamed(tok, chars, chunk_chars=size, disallowed="as_text") == tok.encode(
            SPECIAL_TEXT, disallowed="as_text"
        ), size
        some = {"allowed_special": {"<|a|>"}, "disallowed": "as_text"}
        assert streamed(tok, chars, chunk_chars=size, **some) == tok.encode(SPECIAL_TEXT, **some), size
    with pytest.raises(LmError, match=r"special token '<\|endoftext\|>'"):
        streamed(tok, ["ab <|endo", "ftext|> c"], chunk_chars=1)


def test_stream_unicode(tok: Tokenizer) -> None:
    for size in range(1, 8):
        pieces = [UNICODE[i : i + size] for i in range(0, len(UNICODE), size)]
        assert streamed(tok, pieces, chunk_chars=size) == tok.encode(UNICODE), size


def test_stream_long_uncuttable_runs(tok: Tokenizer) -> None:
    text = "x" * 5000 + " " * 3000 + "\n" * 3000 + "y" + "ab1" * 1000
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert streamed(tok, pieces, chunk_chars=16) == tok.encode(text)


def test_stream_is_lazy_and_checks_its_input(tok: Tokenizer) -> None:
    def endless():  # type: ignore[no-untyped-def]
        while True:
            yield "word. "

    first = next(tok.encode_stream(endless(), chunk_chars=64, num_threads=1))
    assert first and tok.decode(first).startswith("word. word.")
    with pytest.raises(LmError, match="chunk_chars must be at least 1"):
        list(tok.encode_stream(["x"], chunk_chars=0))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    text=st.lists(
        st.sampled_from(ATOMS) | st.text(st.characters(codec="utf-8"), max_size=3), max_size=30
    ).map("".join),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    chunk_chars=st.integers(1, 6),
    mode=st.sampled_from([("all", "raise"), (None, "as_text"), (None, "raise"), ({"<|a|>"}, "as_text")]),
)
def test_stream_property_equals_encode(
    tok: Tokenizer, text: str, cuts: list[int], chunk_chars: int, mode: tuple
) -> None:
    allowed, disallowed = mode
    pieces = split_at(text, cuts)
    try:
        expected = tok.encode(text, allowed_special=allowed, disallowed=disallowed)
    except LmError:
        with pytest.raises(LmError, match="special token"):
            streamed(tok, pieces, chunk_chars=chunk_chars, allowed_special=allowed, disallowed=disallowed)
        return
    got = streamed(tok, pieces, chunk_chars=chunk_chars, allowed_special=allowed, disallowed=disallowed)
    assert got == expected


def test_tokenizer_files_have_the_umask_mode(tok: Tokenizer, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any program writes under the current umask (0644 under umask 022)
    expected = stat.S_IMODE(plain.stat().st_mode)
    directory = tok.save(tmp_path / "tok")
    names = sorted(os.listdir(directory))
    assert names == [
        "merges.txt",
        "special_tokens.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    modes = {name: oct(stat.S_IMODE((directory / name).stat().st_mode)) for name in names}
    assert modes == {name: oct(expected) for name in names}
    assert Tokenizer.load(directory) == tok
