"""Byte-level BPE: the trainer (train.py), tiktoken-backed encoding (encoding.py), GPT-2/HF files (files.py).

merges = train_bpe(texts, vocab_size=2048, special_tokens=["<|endoftext|>", "<|pad|>"])
tok = Tokenizer(merges, ["<|endoftext|>", "<|pad|>"])
tok.save("data/tokenizer"); tok = Tokenizer.load("data/tokenizer")
"""

from lm.tokenizer.encoding import Tokenizer
from lm.tokenizer.train import learn_merges, limit_bytes, train_bpe, train_bpe_from_files, train_tokenizer

__all__ = ["Tokenizer", "learn_merges", "limit_bytes", "train_bpe", "train_bpe_from_files", "train_tokenizer"]
