"""A pretrained tokenizer adopted instead of training lm's BPE (`tokenizer.pretrained`).

A checkpoint's embeddings mean something only under the tokenizer it was pretrained with, so fine-tuning
needs that tokenizer's exact ids. Two sources:

* a Hugging Face tokenizer: a directory with `tokenizer.json` (and usually `tokenizer_config.json` /
  `special_tokens_map.json`, which name the roles), or a `tokenizer.json` file. WordPiece (BERT, DistilBERT,
  MiniLM), byte-level BPE (GPT-2, RoBERTa) and SentencePiece-style (Llama) all run through Hugging Face
  `tokenizers` (Rust), so ids equal `transformers.AutoTokenizer`'s;
* a tiktoken encoding: a `.tiktoken` rank file, or a name (`p50k_base`, `cl100k_base`, ...) found in
  tiktoken's cache. lm's role tokens the encoding lacks (<|pad|>, <|cls|>, <|mask|>) are appended after its
  ids, so the ids of text and of <|endoftext|> are tiktoken's own.

The pipeline's roles (cls, sep, pad, mask, eot) map to the tokenizer's own special tokens, and a classifier
row is built as the model family was pretrained: `row_prefix` + text + `row_suffix`, read off the tokenizer's
post-processor ([CLS] text [SEP] for BERT, <s> text </s> for RoBERTa). `adopt` copies the files into
data/tokenizer/ beside `pretrained.json` (kind, roles, content hash), which `load` reads back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from lm.errors import LmError
from lm.io import atomic_write_text
from lm.special_tokens import CLS, EOT, MASK, PAD

RECORD = "pretrained.json"
HF_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)
TIKTOKEN_FILE = "encoding.tiktoken"
ROLES = ("cls", "sep", "pad", "mask", "eot", "bos", "unk")
LM_ROLE_TOKENS = {"eot": EOT, "pad": PAD, "cls": CLS, "mask": MASK}  # what a tiktoken encoding gets appended


class PretrainedTokenizer:
    """The encoding side of a pretrained tokenizer, with the same calls the pipeline makes on lm's Tokenizer
    (encode, encode_batch, encode_documents, decode, token_str, the role ids, hash, save)."""

    def __init__(
        self,
        kind: str,
        backend: Any,
        roles: dict[str, int | None],
        specials: dict[str, int],
        hash: str,
        *,
        text_backend: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind  # "hf" or "tiktoken"
        self._backend = backend  # tokenizers.Tokenizer or tiktoken.Encoding
        self._text_backend = text_backend  # hf: the same tokenizer reading special-token strings as text
        self.roles = roles
        self.special_ids = dict(specials)
        self.special_tokens = list(specials)
        self.hash = hash
        self.extra = extra or {}
        self._id_to_special = {i: s for s, i in specials.items()}
        prefix, suffix = self._row_affixes()
        self.row_prefix, self.row_suffix = prefix, suffix

    # ------------------------------------------------------------------ sizes and roles

    @property
    def vocab_size(self) -> int:
        if self.kind == "hf":
            return self._backend.get_vocab_size(with_added_tokens=True)
        return max(self._backend.max_token_value + 1, max(self.special_ids.values(), default=-1) + 1)

    def _role(self, role: str) -> int:
        value = self.roles.get(role)
        if value is None:
            raise LmError(
                f"tokenizer.pretrained: the tokenizer has no {role} token ({self._role_help(role)})"
            )
        return value

    @staticmethod
    def _role_help(role: str) -> str:
        return {
            "mask": "task=mlm needs one: use a BERT/RoBERTa tokenizer",
            "cls": "a classifier pools it: set model.pooling: mean",
            "pad": "padding needs one",
            "eot": "documents are joined by it",
        }.get(role, "needed here")

    @property
    def pad_id(self) -> int:
        return self._role("pad")

    @property
    def eot_id(self) -> int:
        return self._role("eot")

    @property
    def cls_id(self) -> int:
        return self._role("cls")

    @property
    def mask_id(self) -> int:
        return self._role("mask")

    @property
    def mask_token(self) -> str:
        return self._id_to_special.get(self.mask_id) or self._backend.id_to_token(self.mask_id)

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.kind}, vocab_size={self.vocab_size}, roles={self.roles})"

    def _row_affixes(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer's post-processor puts around one text (HF), or lm's <|cls|> prefix
        (tiktoken)."""
        if self.kind == "tiktoken":
            return ([self.roles["cls"]] if self.roles.get("cls") is not None else []), []
        probe = "hello"
        plain = self._backend.encode(probe, add_special_tokens=False).ids
        full = self._backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        raise LmError(
            "tokenizer.pretrained: its post-processor changes the text's own tokens; lm cannot build rows"
        )

    def row(self, ids: Sequence[int], max_len: int) -> list[int]:
        """A classifier row: prefix + the first tokens that fit + suffix (as AutoTokenizer's truncation)."""
        room = max(0, max_len - len(self.row_prefix) - len(self.row_suffix))
        return [*self.row_prefix, *ids[:room], *self.row_suffix][:max_len]

    # ------------------------------------------------------------------ encoding

    def _check_disallowed(self, text: str, allowed_special: Any, disallowed: str) -> None:
        if disallowed != "raise" or allowed_special == "all":
            return
        allowed = set(allowed_special or ())
        for token in self.special_tokens:
            if token not in allowed and token in text:
                raise LmError(
                    f"text contains special token {token!r}; pass allowed_special={{{token!r}}} "
                    "(or 'all') to encode it as a special token, or disallowed='as_text' to encode it as text"
                )

    def encode(self, text: str, *, allowed_special: Any = None, disallowed: str = "raise") -> list[int]:
        """Ids of text without the row's special tokens. Special-token strings in text become special ids when
        allowed (`allowed_special`), else raise or stay text (`disallowed="as_text"`), as in lm's
        Tokenizer."""
        return self.encode_batch([text], allowed_special=allowed_special, disallowed=disallowed)[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        allowed_special: Any = None,
        disallowed: str = "raise",
        num_threads: int | None = None,
    ) -> list[list[int]]:
        texts = list(texts)
        for text in texts:
            self._check_disallowed(text, allowed_special, disallowed)
        as_special = allowed_special == "all" or bool(allowed_special)
        if self.kind == "tiktoken":
            allowed = (
                set(self.special_tokens) if allowed_special == "all" else set(allowed_special or ())
            ) & set(self.special_tokens)
            if not allowed:
                return self._backend.encode_ordinary_batch(texts, num_threads=num_threads or 1)
            return self._backend.encode_batch(
                texts, allowed_special=allowed, disallowed_special=(), num_threads=num_threads or 1
            )
        backend = self._backend if as_special else self._text_backend
        return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_documents(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 1024,
        allowed_special: Any = None,
        disallowed: str = "raise",
        num_threads: int | None = None,
    ) -> Iterator[list[int]]:
        it = iter(texts)
        while batch := list(islice(it, batch_size)):
            yield from self.encode_batch(batch, allowed_special=allowed_special, disallowed=disallowed)

    def _ids(self, ids: Iterable[int]) -> list[int]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()  # type: ignore[union-attr]
        out = [int(i) for i in ids]
        bad = next((i for i in out if i < 0 or i >= self.vocab_size), None)
        if bad is not None:
            raise LmError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return out

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        out = self._ids(ids)
        if skip_special:
            out = [i for i in out if i not in self._id_to_special]
        if self.kind == "hf":
            return self._backend.decode(out, skip_special_tokens=False)
        return self._backend.decode_bytes(out).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        """The bytes one token stands for (tiktoken: exact; Hugging Face: its decoded text, without the space
        a word-initial WordPiece token implies)."""
        i = self._ids([id])[0]
        if self.kind == "tiktoken":
            return self._backend.decode_single_token_bytes(i)
        return self._backend.decode([i]).encode("utf-8")

    def token_str(self, id: int) -> str:
        """A printable label for one token: a special token as itself, else its text (WordPiece's ##piece
        kept)."""
        i = self._ids([id])[0]
        if i in self._id_to_special:
            return self._id_to_special[i]
        if self.kind == "hf":
            token = self._backend.id_to_token(i) or ""
            return token if token.startswith("##") else (self._backend.decode([i]) or token)
        return self._backend.decode_bytes([i]).decode("utf-8", errors="backslashreplace")

    # ------------------------------------------------------------------ files

    def save(self, directory: str | Path) -> Path:
        """Copy the tokenizer's files into directory and write pretrained.json (kind, roles, hash)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        source = Path(self.extra["files_dir"])
        for name in self.extra["files"]:
            shutil.copyfile(source / name, directory / name)
        record = {
            "kind": self.kind,
            "roles": self.roles,
            "special_ids": self.special_ids,
            "hash": self.hash,
            **{k: v for k, v in self.extra.items() if k not in ("files_dir",)},
        }
        atomic_write_text(directory / RECORD, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PretrainedTokenizer:
        """Read a directory written by `save`; the files must still hash to the recorded content."""
        directory = Path(directory)
        try:
            record = json.loads((directory / RECORD).read_text())
        except (OSError, json.JSONDecodeError):
            raise LmError(f"{directory / RECORD}: not readable: re-run `lm tokenize`") from None
        tok = (
            open_hf(directory)
            if record["kind"] == "hf"
            else open_tiktoken(directory / TIKTOKEN_FILE, name=record.get("name"))
        )
        if tok.hash != record["hash"]:
            raise LmError(
                f"{directory}: the tokenizer files changed since `lm tokenize` (hash {tok.hash[:12]}, "
                f"recorded {record['hash'][:12]}): re-run `lm tokenize`"
            )
        return tok


# ---------------------------------------------------------------------- Hugging Face tokenizers


def _hf_roles(directory: Path, backend: Any) -> dict[str, int | None]:
    """Role -> id from tokenizer_config.json / special_tokens_map.json, else by the usual token names."""
    named: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise LmError(f"{path}: not valid JSON ({err.msg})") from None
        for role in ("cls", "sep", "pad", "mask", "eos", "bos", "unk"):
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and role not in named:
                named[role] = value
    guesses = {
        "cls": ("[CLS]", "<s>"),
        "sep": ("[SEP]", "</s>"),
        "pad": ("[PAD]", "<pad>"),
        "mask": ("[MASK]", "<mask>"),
        "eos": ("</s>", "<|endoftext|>"),
        "bos": ("<s>", "<|endoftext|>"),
        "unk": ("[UNK]", "<unk>"),
    }
    ids: dict[str, int | None] = {}
    for role, names in guesses.items():
        for token in ([named[role]] if role in named else []) + list(names):
            i = backend.token_to_id(token)
            if i is not None:
                ids[role] = i
                break
        else:
            ids[role] = None
    # the pipeline's roles: documents end with eos (GPT-2/RoBERTa/Llama) or [SEP] (BERT); padding falls back
    # to eos (never attended); a classifier row starts with cls (or bos when the family has no cls, e.g.
    # Llama)
    return {
        "cls": ids["cls"],
        "sep": ids["sep"],
        "pad": ids["pad"] if ids["pad"] is not None else ids["eos"],
        "mask": ids["mask"],
        "eot": ids["eos"] if ids["eos"] is not None else ids["sep"],
        "bos": ids["bos"],
        "unk": ids["unk"],
    }


def open_hf(path: Path) -> PretrainedTokenizer:
    """A Hugging Face tokenizer from a directory holding tokenizer.json, or from the tokenizer.json file."""
    from tokenizers import Tokenizer as RustTokenizer

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    file = directory / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise LmError(
            f"tokenizer.pretrained: {directory} has no tokenizer.json (write it with "
            "`AutoTokenizer.from_pretrained(D).save_pretrained(D)`, which converts vocab.txt / merges.txt)"
        )
    try:
        backend = RustTokenizer.from_file(str(file))
    except Exception as err:  # the Rust side raises a plain Exception for any bad file
        raise LmError(
            f"tokenizer.pretrained: {file} is not a Hugging Face tokenizer.json "
            f"({str(err).splitlines()[0][:100]})"
        ) from None
    backend.no_truncation()
    backend.no_padding()
    text_backend = RustTokenizer.from_str(backend.to_str())
    text_backend.encode_special_tokens = True
    roles = _hf_roles(directory, backend)
    specials = {t.content: i for i, t in sorted(backend.get_added_tokens_decoder().items()) if t.special}
    for i in roles.values():  # a role token that is not marked special (e.g. GPT-2's pad) is still special
        if i is not None and i not in specials.values():
            specials[backend.id_to_token(i)] = i
    h = hashlib.sha256(b"lm-hf-tokenizer-v1\n" + backend.to_str().encode() + b"\n")
    h.update(json.dumps(roles, sort_keys=True).encode())
    files = (
        [name for name in HF_FILES if (directory / name).is_file()] if path.is_dir() else ["tokenizer.json"]
    )
    extra = {"files_dir": str(directory), "files": files}
    return PretrainedTokenizer(
        "hf", backend, roles, specials, h.hexdigest(), text_backend=text_backend, extra=extra
    )


# ---------------------------------------------------------------------- tiktoken encodings


def _registry(name: str) -> dict[str, Any] | None:
    """tiktoken's constructor for a named encoding, run without reading its rank file: its pattern, special
    tokens and the address of the rank file (None when tiktoken has no such name)."""
    from tiktoken.registry import ENCODING_CONSTRUCTORS, _find_constructors

    _find_constructors()
    constructor = (ENCODING_CONSTRUCTORS or {}).get(name)
    if constructor is None:
        return None
    import tiktoken_ext.openai_public as public

    seen: dict[str, Any] = {}

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.update(url=url, expected_hash=expected_hash)
        return {}

    original = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = record  # read the constructor's settings, not its file
    try:
        spec = constructor()
    finally:
        public.load_tiktoken_bpe = original
    return {**spec, **seen}


def _tiktoken_spec(source: str) -> tuple[dict[bytes, int], str, dict[str, int], str]:
    """(ranks, pattern, special tokens, name) for a .tiktoken file or a tiktoken encoding name."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    path = Path(source)
    if path.suffix == ".tiktoken" or path.is_file():
        if not path.is_file():
            raise LmError(f"tokenizer.pretrained: {path} not found")
        name = path.stem
        spec = _registry(name) or {}
        try:
            ranks = load_tiktoken_bpe(str(path))
        except Exception as err:
            raise LmError(
                f"tokenizer.pretrained: {path} is not a tiktoken rank file ({str(err)[:80]})"
            ) from None
        expected = spec.get("expected_hash")
        if expected and hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise LmError(
                f"tokenizer.pretrained: {path} is named {name} but is not tiktoken's {name} file "
                "(sha256 differs)"
            )
        from lm.tokenizer.pretokenize import GPT2_PATTERN

        pattern = spec.get("pat_str", GPT2_PATTERN)  # an unknown name: GPT-2's pre-tokenizer
        specials = dict(spec.get("special_tokens", {}))
        return ranks, pattern, specials, name
    spec = _registry(source)
    if spec is None:
        raise LmError(
            f"tokenizer.pretrained: {source!r} is neither a path nor a tiktoken encoding name "
            f"({', '.join(tiktoken.list_encoding_names())})"
        )
    try:
        encoding = tiktoken.get_encoding(source)  # tiktoken's cache (TIKTOKEN_CACHE_DIR), else a download
    except Exception:
        raise LmError(
            f"tokenizer.pretrained: tiktoken's {source} is not in its cache and cannot be fetched: download "
            f"{spec['url']} on a connected machine and set tokenizer.pretrained to the file's path"
        ) from None
    return encoding._mergeable_ranks, encoding._pat_str, dict(encoding._special_tokens), source


def open_tiktoken(source: str | Path, *, name: str | None = None) -> PretrainedTokenizer:
    """A tiktoken encoding, with lm's missing role tokens appended after its ids."""
    import tiktoken

    ranks, pattern, specials, found = _tiktoken_spec(str(source))
    name = name or found
    if name != found:  # a saved copy keeps the encoding's name: read its pattern and specials from it
        spec = _registry(name) or {}
        pattern = spec.get("pat_str", pattern)
        specials = dict(spec.get("special_tokens", specials))
    next_id = max([*ranks.values(), *specials.values()]) + 1
    for token in LM_ROLE_TOKENS.values():
        if token not in specials:
            specials[token] = next_id
            next_id += 1
    encoding = tiktoken.Encoding(
        f"lm-{name}", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )
    roles = {role: specials[token] for role, token in LM_ROLE_TOKENS.items()}
    roles.update(sep=None, bos=None, unk=None)
    h = hashlib.sha256(b"lm-tiktoken-v1\n" + pattern.encode() + b"\n")
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(base64.b64encode(token) + b" %d\n" % rank)
    h.update(json.dumps(specials, sort_keys=True).encode())
    extra: dict[str, Any] = {"name": name, "files": [], "files_dir": "."}
    return PretrainedTokenizer("tiktoken", encoding, roles, specials, h.hexdigest(), extra=extra)


def _save_tiktoken(tok: PretrainedTokenizer, directory: Path) -> None:
    lines = [
        base64.b64encode(t).decode() + f" {r}"
        for t, r in sorted(tok._backend._mergeable_ranks.items(), key=lambda kv: kv[1])
    ]
    atomic_write_text(directory / TIKTOKEN_FILE, "\n".join(lines) + "\n")


def adopt(source: str) -> PretrainedTokenizer:
    """The tokenizer `tokenizer.pretrained` names: a HF directory / tokenizer.json, a .tiktoken file or a
    name."""
    path = Path(os.path.expanduser(source))
    if path.is_dir() or path.name.endswith(".json"):
        if not path.exists():
            raise LmError(f"tokenizer.pretrained: {path} not found")
        return open_hf(path)
    return open_tiktoken(str(path) if (path.suffix == ".tiktoken" or path.exists()) else source)


def save_adopted(tok: PretrainedTokenizer, directory: Path) -> Path:
    """Write an adopted tokenizer into directory (data/tokenizer/): its files and pretrained.json."""
    directory.mkdir(parents=True, exist_ok=True)
    if tok.kind == "tiktoken":
        _save_tiktoken(tok, directory)
    return tok.save(directory)
