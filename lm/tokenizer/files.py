"""Tokenizer files: GPT-2 ``vocab.json`` + ``merges.txt``, ``special_tokens.json``, Hugging Face files.

``merges.txt`` (rank order) and ``special_tokens.json`` (order = id order) define the tokenizer;
``vocab.json`` is redundant and is checked against them on load, so a hand-edited or mismatched set of
files fails loudly instead of silently shifting token ids. Every file is written atomically, with the
normal permissions of the umask, by lm.io. The functions take and return plain data (merges, special
tokens, ids), so this module never imports lm.tokenizer.encoding: `Tokenizer.save` and `Tokenizer.load` call
it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm.errors import LmError
from lm.io import atomic_write_text
from lm.tokenizer.hf_export import (
    from_unicode,
    gpt2_vocab,
    hf_tokenizer_config,
    hf_tokenizer_json,
    to_unicode,
)

VOCAB, MERGES, SPECIAL, HF_JSON, HF_CONFIG = (
    "vocab.json",
    "merges.txt",
    "special_tokens.json",
    "tokenizer.json",
    "tokenizer_config.json",
)
MERGES_HEADER = "#version: 0.2"


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=None) + "\n"


def save_tokenizer(
    directory: Path,
    *,
    merges: Sequence[tuple[bytes, bytes]],
    special_tokens: Sequence[str],
    mergeable_ranks: Mapping[bytes, int],
    special_ids: Mapping[str, int],
    hash: str,
) -> Path:
    """Write the tokenizer files into directory (created if needed); return the directory."""
    merges_text = "\n".join([MERGES_HEADER, *(f"{to_unicode(a)} {to_unicode(b)}" for a, b in merges)]) + "\n"
    special = {"special_tokens": list(special_tokens), "ids": dict(special_ids), "hash": hash}
    contents = {  # everything is rendered (and checked) before the first file is written
        VOCAB: _json(gpt2_vocab(mergeable_ranks, special_ids)),
        MERGES: merges_text,
        SPECIAL: json.dumps(special, ensure_ascii=False, indent=2) + "\n",
        HF_JSON: _json(hf_tokenizer_json(merges, mergeable_ranks, special_ids)),
        HF_CONFIG: json.dumps(hf_tokenizer_config(special_ids), indent=2) + "\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        atomic_write_text(directory / name, text)
    return directory


def _read(path: Path) -> str:
    if not path.is_file():
        raise LmError(
            f"{path}: tokenizer file not found (run `lm tokenize` or point at a saved tokenizer directory)"
        )
    return path.read_text(encoding="utf-8")


@dataclass
class SavedTokenizer:
    """A tokenizer directory read by `read_tokenizer`: the merges and special tokens that define the
    tokenizer, and what `check` compares with the tokenizer they build (vocab.json, the recorded hash)."""

    directory: Path
    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    vocab_text: str
    recorded_hash: str | None

    def check(
        self, *, mergeable_ranks: Mapping[bytes, int], special_ids: Mapping[str, int], hash: str
    ) -> None:
        """LmError naming the file unless vocab.json and the recorded hash match the tokenizer built from the
        merges and special tokens."""
        vocab_path, special_path = self.directory / VOCAB, self.directory / SPECIAL
        try:
            vocab = json.loads(self.vocab_text)
        except json.JSONDecodeError as err:
            raise LmError(f"{vocab_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if vocab != gpt2_vocab(mergeable_ranks, special_ids):
            raise LmError(
                f"{vocab_path}: does not match {MERGES} and {SPECIAL} (files from different tokenizers?)"
            )
        if self.recorded_hash is not None and self.recorded_hash != hash:
            raise LmError(
                f"{special_path}: hash {self.recorded_hash[:12]} does not match the merges ({hash[:12]})"
            )


def read_tokenizer(directory: Path) -> SavedTokenizer:
    """Read a directory written by `save_tokenizer`; LmError naming the file on any problem."""
    if not directory.is_dir():
        raise LmError(f"{directory}: tokenizer directory not found (run `lm tokenize` first)")
    merges_path, vocab_path, special_path = directory / MERGES, directory / VOCAB, directory / SPECIAL
    merges_text, vocab_text, special_text = _read(merges_path), _read(vocab_path), _read(special_path)

    merges: list[tuple[bytes, bytes]] = []
    for lineno, line in enumerate(merges_text.splitlines(), start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        try:
            if len(parts) != 2:
                raise KeyError(line)
            merges.append((from_unicode(parts[0]), from_unicode(parts[1])))
        except KeyError:
            raise LmError(f"{merges_path}:{lineno}: not a GPT-2 merge line 'A B': {line!r}") from None

    try:
        special = json.loads(special_text)
        specials = special["special_tokens"]
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError):
        raise LmError(f"{special_path}: expected JSON with a 'special_tokens' list of strings") from None
    return SavedTokenizer(directory, merges, specials, vocab_text, special.get("hash"))
