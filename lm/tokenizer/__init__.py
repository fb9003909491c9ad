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


__all__ = ["Tokenizer", "learn_merges", "limit_bytes", "load_tokenizer", "train_bpe", "train_tokenizer"]
