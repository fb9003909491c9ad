"""Byte-level BPE: the trainer (train.py), tiktoken-backed encoding (encoding.py), GPT-2/HF files (files.py).

merges = train_bpe(texts, vocab_size=2048, special_tokens=["<|endoftext|>", "<|pad|>"])
tok = Tokenizer(merges, ["<|endoftext|>", "<|pad|>"])
tok.save("data/tokenizer"); tok = Tokenizer.load("data/tokenizer")

`load_tokenizer(directory)` reads either kind a tokenizer stage writes: lm's BPE, or a pretrained tokenizer
adopted through `tokenizer.pretrained` (pretrained.py), which answers the same calls.
"""

from pathlib import Path

from lm.tokenizer.encoding import Tokenizer
from lm.tokenizer.train import learn_merges, limit_bytes, train_bpe, train_tokenizer


def load_tokenizer(directory: str | Path):
    """The tokenizer saved in directory: a pretrained one (pretrained.json) or lm's BPE."""
    from lm.tokenizer.pretrained import RECORD, PretrainedTokenizer

    if (Path(directory) / RECORD).is_file():
        return PretrainedTokenizer.load(directory)
    return Tokenizer.load(directory)


def classifier_rows(tok, texts: list[str], max_len: int) -> list[list[int]]:
    """A user's texts (`lm predict`, `lm serve`) as classifier rows, built as `lm encode` built the training
    rows (`tok.row`); special-token text in them is read as plain text."""
    encoded = tok.encode_batch(texts, allowed_special=set(), disallowed="as_text")
    return [tok.row(ids, max_len) for ids in encoded]


__all__ = [
    "Tokenizer",
    "classifier_rows",
    "learn_merges",
    "limit_bytes",
    "load_tokenizer",
    "train_bpe",
    "train_tokenizer",
]
