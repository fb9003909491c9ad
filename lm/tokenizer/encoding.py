"""The trained tokenizer: merges + special tokens, encoding through a `tiktoken.Encoding`.

Token ids (GPT-2 style)::

    0 .. 255                      the single bytes, id == byte value
    256 .. 256 + len(merges) - 1  one token per merge, in training order (its rank)
    then                          the special tokens, in the order given

tiktoken applies the merges by rank (lowest first) inside each GPT-2 pre-token, which is the standard BPE
encoding of the trained merges; the exported ``tokenizer.json`` (Hugging Face) gives the same ids, which
the tests check.

Special tokens in text. ``encode`` never splits a special token and never silently turns one into
ordinary text. ``allowed_special`` names the special token strings that become their special ids
(``"all"``, a set, or ``None`` for none); what happens to the *other* special strings found in the text is
``disallowed``: ``"raise"`` (default; an `LmError` naming the token) or ``"as_text"`` (encoded as the
ordinary bytes they are, e.g. to tokenize user text that merely mentions ``<|endoftext|>``)::

    tok.encode("a<|endoftext|>b")                          # LmError: text contains special token ...
    tok.encode("a<|endoftext|>b", allowed_special="all")   # [97, eot_id, 98]
    tok.encode("a<|endoftext|>b", disallowed="as_text")    # [97, 27, 91, ...]: plain bytes

Many texts and one long text. ``encode_batch`` / ``encode_documents`` encode each text on its own (one id
list per document); ``encode_stream`` / ``encode_file`` take ONE text in pieces (lines, blocks) and give
exactly the ids of ``encode`` on the whole text, whatever the pieces::

    sum(tok.encode_stream(["x\\n", "\\n", "\\n", "y"]), []) == tok.encode("x\\n\\n\\ny")   # True
    [tok.encode(line) for line in ["x\\n", "\\n", "\\n", "y"]]             # other ids: 3 x "\\n"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import tiktoken

from lm.errors import LmError
from lm.special_tokens import CLS, EOT, MASK, PAD
from lm.tokenizer.files import read_tokenizer, save_tokenizer
from lm.tokenizer.pretokenize import GPT2_PATTERN, special_splitter, stream_cuts

Merge = tuple[bytes, bytes]
AllowedSpecial = Literal["all"] | Set[str] | None
Disallowed = Literal["raise", "as_text"]

THREAD_CHARS = 1 << 18  # text per thread task in encode_batch; below this, batches run on one thread


class Tokenizer:
    """Byte-level BPE tokenizer: ``Tokenizer(merges, special_tokens)``; see the module docstring."""

    def __init__(self, merges: Sequence[Merge], special_tokens: Sequence[str] = ()) -> None:
        self.merges: list[Merge] = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens: list[str] = list(special_tokens)
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise LmError(f"tokenizer special tokens have duplicates: {self.special_tokens}")

        ranks: dict[bytes, int] = {bytes([i]): i for i in range(256)}
        for a, b in self.merges:
            if a not in ranks or b not in ranks:
                raise LmError(f"tokenizer merge {a!r} + {b!r} uses a token that no earlier merge made")
            token = a + b
            if token in ranks:
                raise LmError(f"tokenizer merge {a!r} + {b!r} makes a token that already exists")
            ranks[token] = len(ranks)
        self.mergeable_ranks = ranks
        first = len(ranks)
        self.special_ids: dict[str, int] = {s: first + i for i, s in enumerate(self.special_tokens)}
        for s in self.special_tokens:
            if s.encode("utf-8") in ranks:
                raise LmError(f"special token {s!r} equals a learned token; use a marker like '<|{s}|>'")
        self._id_to_bytes: list[bytes] = list(ranks)  # dicts keep insertion order: index == id
        self._id_to_bytes += [s.encode("utf-8") for s in self.special_tokens]
        self.encoding = tiktoken.Encoding(
            f"lm-bpe-{self.hash[:16]}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_ids,
        )
        # tiktoken picks among special tokens that match at one place in arbitrary order; when one special
        # token is a prefix of another we cut the text ourselves so that the longest one wins.
        self._prefix_clash = any(
            s != t and t.startswith(s) for s in self.special_tokens for t in self.special_tokens
        )
        self._splitters: dict[frozenset[str], re.Pattern[str] | None] = {}

    # ------------------------------------------------------------------ identity and sizes

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special_tokens)

    @cached_property
    def hash(self) -> str:
        """sha256 of the pattern, the merges and the special tokens: equal hash, equal token ids."""
        h = hashlib.sha256()
        h.update(b"lm-bpe-v1\n" + GPT2_PATTERN.encode() + b"\n")
        for a, b in self.merges:
            h.update(f"{a.hex()} {b.hex()}\n".encode())
        h.update(json.dumps(self.special_tokens, ensure_ascii=True).encode())
        return h.hexdigest()

    def _special(self, token: str) -> int:
        try:
            return self.special_ids[token]
        except KeyError:
            raise LmError(f"tokenizer has no special token {token!r} (tokenizer.special_tokens)") from None

    @property
    def pad_id(self) -> int:
        return self._special(PAD)

    @property
    def eot_id(self) -> int:
        return self._special(EOT)

    @property
    def cls_id(self) -> int:
        return self._special(CLS)

    @property
    def mask_id(self) -> int:
        return self._special(MASK)

    @property
    def mask_token(self) -> str:
        return MASK

    kind = "bpe"

    @property
    def roles(self) -> dict[str, int | None]:
        """The pipeline's roles -> ids (lm's BPE has no separator: a classifier row is <|cls|> + text)."""
        return {
            "cls": self.special_ids.get(CLS),
            "sep": None,
            "pad": self.special_ids.get(PAD),
            "mask": self.special_ids.get(MASK),
            "eot": self.special_ids.get(EOT),
            "bos": None,
            "unk": None,
        }

    @property
    def row_prefix(self) -> list[int]:
        return [self.cls_id]

    row_suffix: tuple[int, ...] = ()

    def row(self, ids: Sequence[int], max_len: int) -> list[int]:
        """A classifier row: <|cls|> then the first max_len - 1 tokens."""
        return [self.cls_id, *ids][:max_len]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special={self.special_tokens})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    # Pickle as (merges, specials): a process that unpickles one (e.g. a worker of a process pool) rebuilds
    # the tiktoken Encoding itself.
    def __getstate__(self) -> dict[str, Any]:
        return {"merges": self.merges, "special_tokens": self.special_tokens}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["merges"], state["special_tokens"])  # type: ignore[misc]

    # ------------------------------------------------------------------ encoding

    def _allowed(self, allowed_special: AllowedSpecial) -> frozenset[str]:
        if allowed_special is None:
            return frozenset()
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if isinstance(allowed_special, str):
            raise LmError(
                f"allowed_special must be 'all', a set of special tokens or None, got {allowed_special!r}"
            )
        allowed = frozenset(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise LmError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        return allowed

    def _splitter(self, tokens: frozenset[str]) -> re.Pattern[str] | None:
        if tokens not in self._splitters:
            self._splitters[tokens] = special_splitter(sorted(tokens))
        return self._splitters[tokens]

    def _check(self, text: str, allowed: frozenset[str], disallowed: Disallowed) -> None:
        if disallowed == "as_text":
            return
        if disallowed != "raise":
            raise LmError(f"disallowed must be 'raise' or 'as_text', got {disallowed!r}")
        finder = self._splitter(frozenset(self.special_tokens) - allowed)
        if finder is not None:
            m = finder.search(text)
            if m:
                raise LmError(
                    f"text contains special token {m.group()!r}; pass allowed_special={{{m.group()!r}}} "
                    "(or 'all') to encode it as a special token, or disallowed='as_text' to encode it as text"
                )

    def encode(
        self, text: str, *, allowed_special: AllowedSpecial = None, disallowed: Disallowed = "raise"
    ) -> list[int]:
        """Token ids of text; see the module docstring for `allowed_special` and `disallowed`."""
        allowed = self._allowed(allowed_special)
        self._check(text, allowed, disallowed)
        return self._encode_checked(text, allowed)

    def _encode_checked(self, text: str, allowed: frozenset[str]) -> list[int]:
        if not allowed:
            return self.encoding.encode_ordinary(text)
        if not self._prefix_clash:
            return self.encoding.encode(text, allowed_special=allowed, disallowed_special=())
        ids: list[int] = []
        splitter = self._splitter(allowed)
        assert splitter is not None
        start = 0
        for m in splitter.finditer(text):
            ids += self.encoding.encode_ordinary(text[start : m.start()])
            ids.append(self.special_ids[m.group()])
            start = m.end()
        ids += self.encoding.encode_ordinary(text[start:])
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        allowed_special: AllowedSpecial = None,
        disallowed: Disallowed = "raise",
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """`encode` over many texts, on a thread pool when there is enough text (tiktoken releases the GIL).

        Texts go to threads in contiguous slices of about `THREAD_CHARS` characters rather than one task per
        text (tiktoken's own encode_batch), which costs less when texts are short.
        """
        texts = texts if isinstance(texts, list) else list(texts)
        allowed = self._allowed(allowed_special)
        for text in texts:
            self._check(text, allowed, disallowed)
        threads = num_threads or min(8, os.cpu_count() or 1)
        slices: list[Sequence[str]] = []
        start, filled = 0, 0
        for i, text in enumerate(texts):
            filled += len(text)
            if filled >= THREAD_CHARS:
                slices.append(texts[start : i + 1])
                start, filled = i + 1, 0
        if start < len(texts):
            slices.append(texts[start:])
        if threads == 1 or len(slices) < 2:
            return [self._encode_checked(t, allowed) for t in texts]
        with ThreadPoolExecutor(min(threads, len(slices))) as pool:
            parts = pool.map(lambda part: [self._encode_checked(t, allowed) for t in part], slices)
            return [ids for part in parts for ids in part]

    def encode_documents(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 1024,
        allowed_special: AllowedSpecial = None,
        disallowed: Disallowed = "raise",
        num_threads: int | None = None,
    ) -> Iterator[list[int]]:
        """Yield `encode` of each document in order, `batch_size` documents at a time (bounded memory).

        Each text is a whole document, encoded on its own; for one text that arrives in pieces (a file's
        lines or blocks) use `encode_stream`, which does not cut the text where the pieces end.
        """
        it = iter(texts)
        while batch := list(islice(it, batch_size)):
            yield from self.encode_batch(
                batch, allowed_special=allowed_special, disallowed=disallowed, num_threads=num_threads
            )

    def encode_stream(
        self,
        pieces: Iterable[str],
        *,
        chunk_chars: int = THREAD_CHARS,
        allowed_special: AllowedSpecial = None,
        disallowed: Disallowed = "raise",
        num_threads: int | None = None,
    ) -> Iterator[list[int]]:
        """Ids of ONE text given as consecutive pieces: joined, they are exactly ``encode("".join(pieces))``.

        Where the pieces end means nothing: the lines ``"x\\n"``, ``"\\n"``, ``"\\n"``, ``"y"`` give the ids
        of ``"x\\n\\n\\ny"`` (``\\n\\n`` then ``\\n``), not three ``\\n`` tokens. The text is re-cut into
        parts of about `chunk_chars` characters at points where no later text can change the ids
        (`stream_cuts`) and each batch of parts is encoded by `encode_batch` on threads, so memory holds about
        chunk_chars * threads characters plus the longest pre-token. A disallowed special token raises when
        its batch is reached, after the ids before it were yielded. Pass lines with their line ends (open
        files with ``newline=""``, or use `encode_file`), or the text is not the file's.
        """
        if chunk_chars < 1:
            raise LmError(f"encode_stream: chunk_chars must be at least 1, got {chunk_chars}")
        threads = num_threads or min(8, os.cpu_count() or 1)
        batch_chars = chunk_chars * threads
        kwargs: dict[str, Any] = {"allowed_special": allowed_special, "disallowed": disallowed}
        held: list[str] = []
        filled, due = 0, batch_chars
        for piece in pieces:
            if not isinstance(piece, str):
                raise LmError(f"encode_stream expects str pieces of one text, got {type(piece).__name__}")
            held.append(piece)
            filled += len(piece)
            if filled >= due:
                text = "".join(held)
                parts, rest = self._cut(text, chunk_chars)
                yield from self.encode_batch(parts, num_threads=num_threads, **kwargs)
                held, filled = [rest], len(rest)
                due = max(batch_chars, 2 * filled)  # a long uncuttable run: wait for twice as much text
        text = "".join(held)
        parts, rest = self._cut(text, chunk_chars)
        yield from self.encode_batch([*parts, rest], num_threads=num_threads, **kwargs)

    def _cut(self, text: str, chunk_chars: int) -> tuple[list[str], str]:
        """Text cut into parts that encode as the whole does, and the rest that must wait for more text."""
        bounds = [0, *stream_cuts(text, chunk_chars, self.special_tokens)]
        parts = [text[a:b] for a, b in zip(bounds, bounds[1:])]
        return parts, text[bounds[-1] :]

    def encode_file(
        self,
        path: str | Path,
        *,
        chunk_chars: int = THREAD_CHARS,
        allowed_special: AllowedSpecial = None,
        disallowed: Disallowed = "raise",
        num_threads: int | None = None,
    ) -> Iterator[list[int]]:
        """Ids of a UTF-8 text file, streamed: exactly `encode` of its text, line ends (CRLF too) as in the
        file."""
        path = Path(path)
        if not path.is_file():
            raise LmError(f"{path}: file not found")
        try:
            with path.open(encoding="utf-8", newline="") as f:  # newline="": keep "\r\n" as it is
                blocks = iter(lambda: f.read(chunk_chars), "")
                yield from self.encode_stream(
                    blocks,
                    chunk_chars=chunk_chars,
                    allowed_special=allowed_special,
                    disallowed=disallowed,
                    num_threads=num_threads,
                )
        except UnicodeDecodeError as err:
            raise LmError(f"{path}: not valid UTF-8 ({err.reason}); convert the file to UTF-8") from None

    # ------------------------------------------------------------------ decoding

    def _ids(self, ids: Iterable[int]) -> list[int]:
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()  # type: ignore[union-attr]
        out = [int(i) for i in ids]
        if out and (min(out) < 0 or max(out) >= self.vocab_size):
            bad = next(i for i in out if i < 0 or i >= self.vocab_size)
            raise LmError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return out

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(self._ids(ids))

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of ids; byte sequences that are not valid UTF-8 become U+FFFD (never raises for valid ids)."""
        out = self._ids(ids)
        if skip_special:
            first = 256 + len(self.merges)
            out = [i for i in out if i < first]
        return self.encoding.decode_bytes(out).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 string)."""
        return self._id_to_bytes[self._ids([id])[0]]

    def token_str(self, id: int) -> str:
        """A printable label for one token, for plots and tables.

        Special tokens as themselves; other bytes decoded as UTF-8 with invalid bytes as ``\\xNN``; control
        characters as escapes (``\\n``, ``\\t``, ``\\x07``); spaces are kept.
        """
        i = self._ids([id])[0]
        if i >= 256 + len(self.merges):
            return self.special_tokens[i - 256 - len(self.merges)]
        text = self._id_to_bytes[i].decode("utf-8", errors="backslashreplace")
        return "".join(
            ch
            if ch == " " or unicodedata.category(ch)[0] not in "CZ"
            else ch.encode("unicode_escape").decode("ascii")
            for ch in text
        )

    # ------------------------------------------------------------------ files

    def save(self, directory: str | Path) -> Path:
        """Write vocab.json, merges.txt, special_tokens.json, tokenizer.json, tokenizer_config.json."""
        return save_tokenizer(
            Path(directory),
            merges=self.merges,
            special_tokens=self.special_tokens,
            mergeable_ranks=self.mergeable_ranks,
            special_ids=self.special_ids,
            hash=self.hash,
        )

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save` (vocab.json + merges.txt + special_tokens.json)."""
        saved = read_tokenizer(Path(directory))
        tok = cls(saved.merges, saved.special_tokens)
        saved.check(mergeable_ranks=tok.mergeable_ranks, special_ids=tok.special_ids, hash=tok.hash)
        return tok
