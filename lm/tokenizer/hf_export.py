"""GPT-2's byte <-> unicode mapping and the Hugging Face ``tokenizer.json`` for a trained tokenizer.

GPT-2 files (vocab.json, merges.txt) cannot hold raw bytes, so each byte is shown as one printable
character: printable Latin-1 bytes as themselves, the others (control bytes, space, ...) shifted to
U+0100 and up, e.g. space -> ``Ġ``, newline -> ``Ċ``. ``" the"`` is written ``Ġthe``.

The ``tokenizer.json`` uses the same GPT-2 pattern (a ``Split`` pre-tokenizer), then the ``ByteLevel``
byte mapping, a ``BPE`` model with our merges in rank order, and the special tokens as added tokens that
are matched before pre-tokenization, so Hugging Face ``tokenizers`` and ``transformers`` give the same ids
as tiktoken. Written by hand (no dependency on ``tokenizers`` at run time). The functions take the
tokenizer's tables as plain data, so this module never imports lm.tokenizer.encoding (which imports it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from lm.errors import LmError
from lm.special_tokens import CLS, EOT, MASK, PAD
from lm.tokenizer.pretokenize import GPT2_PATTERN


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 bytes to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def to_unicode(token: bytes) -> str:
    """``b" the" -> "Ġthe"``."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_unicode(text: str) -> bytes:
    """``"Ġthe" -> b" the"``; KeyError for characters outside the mapping."""
    table = unicode_to_bytes()
    return bytes(table[c] for c in text)


def gpt2_vocab(mergeable_ranks: Mapping[bytes, int], special_ids: Mapping[str, int]) -> dict[str, int]:
    """vocab.json content: printable token -> id, special tokens included under their own strings."""
    vocab = {to_unicode(token): i for token, i in mergeable_ranks.items()}
    for special, i in special_ids.items():
        if special in vocab:
            raise LmError(
                f"special token {special!r} is spelled like the byte-level form of token {vocab[special]} in "
                "vocab.json; use a marker like '<|name|>'"
            )
        vocab[special] = i
    return vocab


def hf_tokenizer_json(
    merges: Sequence[tuple[bytes, bytes]],
    mergeable_ranks: Mapping[bytes, int],
    special_ids: Mapping[str, int],
) -> dict[str, Any]:
    """The Hugging Face ``tokenizers`` serialization of a tokenizer (format version 1.0)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in special_ids.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": GPT2_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {to_unicode(token): i for token, i in mergeable_ranks.items()},
            "merges": [[to_unicode(a), to_unicode(b)] for a, b in merges],
        },
    }


def hf_tokenizer_config(special_ids: Mapping[str, int]) -> dict[str, Any]:
    """tokenizer_config.json so that ``AutoTokenizer.from_pretrained(directory)`` knows the roles."""
    roles = {"eos_token": EOT, "bos_token": EOT, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000}
    config.update({role: s for role, s in roles.items() if s in special_ids})
    return config
