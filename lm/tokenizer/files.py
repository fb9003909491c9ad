"""Tokenizer files: GPT-2 ``vocab.json`` + ``merges.txt``, ``special_tokens.json``, Hugging Face files.

``merges.txt`` (rank order) and ``special_tokens.json`` (order = id order) define the tokenizer;
``vocab.json`` is redundant and is checked against them on load, so a hand-edited or mismatched set of
files fails loudly instead of silently shifting token ids. Every file is written atomically, with the
normal permissions of the umask, by lm.io.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm.errors import LmError
from lm.io import atomic_write_text
from lm.tokenizer.encoding import Tokenizer
from lm.tokenizer.hf_export import from_unicode, gpt2_vocab, hf_tokenizer_config, hf_tokenizer_json, to_unicode

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


def save_tokenizer(tok: Tokenizer, directory: Path) -> Path:
    """Write the tokenizer files into directory (created if needed); return the directory."""
    merges = "\n".join([MERGES_HEADER, *(f"{to_unicode(a)} {to_unicode(b)}" for a, b in tok.merges)]) + "\n"
    special = {"special_tokens": tok.special_tokens, "ids": tok.special_ids, "hash": tok.hash}
    contents = {  # everything is rendered (and checked) before the first file is written
        VOCAB: _json(gpt2_vocab(tok)),
        MERGES: merges,
        SPECIAL: json.dumps(special, ensure_ascii=False, indent=2) + "\n",
        HF_JSON: _json(hf_tokenizer_json(tok)),
        HF_CONFIG: json.dumps(hf_tokenizer_config(tok), indent=2) + "\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        atomic_write_text(directory / name, text)
    return directory


def _read(path: Path) -> str:
    if not path.is_file():
        raise LmError(f"{path}: tokenizer file not found (run `lm tokenize` or point at a saved tokenizer directory)")
    return path.read_text(encoding="utf-8")


def load_tokenizer(directory: Path) -> Tokenizer:
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

    tok = Tokenizer(merges, specials)
    try:
        vocab = json.loads(vocab_text)
    except json.JSONDecodeError as err:
        raise LmError(f"{vocab_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if vocab != gpt2_vocab(tok):
        raise LmError(f"{vocab_path}: does not match {MERGES} and {SPECIAL} (files from different tokenizers?)")
    recorded = special.get("hash")
    if recorded is not None and recorded != tok.hash:
        raise LmError(f"{special_path}: hash {recorded[:12]} does not match the merges ({tok.hash[:12]})")
    return tok
