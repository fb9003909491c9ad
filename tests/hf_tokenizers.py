"""Tiny pretrained-style tokenizers built locally (no hub): a BERT WordPiece, a RoBERTa and a GPT-2 byte-level
BPE, each saved as `transformers` saves it (tokenizer.json + tokenizer_config.json + special_tokens_map.json),
and a tiktoken rank file. Tests compare lm with `AutoTokenizer` / tiktoken on them."""

from __future__ import annotations

import base64
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I think the new bike lane plan is a step in the right direction. Well said!",
    "Shut up, you complete idiot!! You are so stupid.",
    "naïve café — 数字 123, emoji 🙂 and CAPITALS; tabs\tand\nnewlines.",
    "Once upon a time there was a little girl who loved her red ball.",
    "@user http://t.co/xyz #hashtag RT: it's   spaced    out",
] * 20
_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "tar", "vin", "del", "pra", "gou", "zeb", "Rho", "Qua", "fy"]
CORPUS += [
    " ".join(a + b + c for a in _SYLLABLES[i : i + 4] for b in _SYLLABLES for c in _SYLLABLES[:3])
    for i in range(0, len(_SYLLABLES), 2)
]  # many made-up words: room for a few hundred merges


def bert_dir(root: Path, *, lowercase: bool = True, vocab_size: int = 400) -> Path:
    """A BERT-style WordPiece tokenizer directory ([CLS] text [SEP]; [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3,
    [MASK] 4)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    tok = BertWordPieceTokenizer(lowercase=lowercase)
    tok.train_from_iterator(
        CORPUS, vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    fast = BertTokenizerFast(tokenizer_object=tok._tokenizer, do_lower_case=lowercase)
    out = root / "bert-tokenizer"
    fast.save_pretrained(out)
    return out


def roberta_dir(root: Path, *, vocab_size: int = 400) -> Path:
    """A RoBERTa-style byte-level BPE directory (<s> text </s>; <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        CORPUS, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    tok._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = RobertaTokenizerFast(tokenizer_object=tok._tokenizer)
    out = root / "roberta-tokenizer"
    fast.save_pretrained(out)
    return out


def gpt2_dir(root: Path, *, vocab_size: int = 400) -> Path:
    """A GPT-2-style byte-level BPE directory: no post-processor, <|endoftext|> the only special token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=vocab_size, special_tokens=["<|endoftext|>"])
    fast = GPT2TokenizerFast(tokenizer_object=tok._tokenizer)
    out = root / "gpt2-tokenizer"
    fast.save_pretrained(out)
    return out


def tiktoken_file(root: Path, name: str = "mini.tiktoken") -> tuple[Path, dict[bytes, int]]:
    """A .tiktoken rank file: the 256 bytes, then merges learned by lm's BPE trainer on CORPUS."""
    from lm.tokenizer import train_bpe

    ranks = {bytes([i]): i for i in range(256)}
    for a, b in train_bpe(CORPUS, 256 + 120, []):
        ranks[a + b] = len(ranks)
    path = root / name
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return path, ranks
