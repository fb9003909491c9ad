"""Turn the raw corpus into the token files described in lm.data.encoded, streaming.

Texts arrive shard by shard (lm.data.raw) and are encoded in batches; tokens are appended to the output file
as they come (plain writes, not a writable memmap, whose dirty pages would count in the process' memory until
the end), so memory is bounded by one batch of token lists plus the index: 4 bytes per row (classify
lengths) or 8 per document (clm / mlm offsets). With `write_tokens=False` (encode.mode: on_the_fly) only the
index is written and the tokens are made again when batches are built.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from lm.data.encoded import token_dtype


class _Encoder(Protocol):
    vocab_size: int
    eot_id: int
    cls_id: int
    pad_id: int
    row_prefix: list[int]
    row_suffix: list[int]

    def row(self, ids: list[int], max_len: int) -> list[int]: ...

    def encode_documents(self, texts: Iterable[str], *, disallowed: str) -> Iterator[list[int]]: ...


def encode_rows(
    texts: Iterable[str],
    n_rows: int,
    tok: _Encoder,
    max_len: int,
    out_dir: Path,
    *,
    write_tokens: bool = True,
    block_rows: int = 4096,
) -> dict:
    """classify: one padded row per document as the tokenizer builds it (`tok.row`: <|cls|> + text for lm's
    BPE, [CLS] text [SEP] for BERT), truncated to its first max_len tokens
    (the head of a comment carries its tone; the count of truncated rows goes to meta.json)."""
    dtype = token_dtype(tok.vocab_size)
    lengths = np.zeros(n_rows, dtype=np.int32)
    block = np.full((block_rows, max_len), tok.pad_id, dtype=dtype)
    n_truncated = 0
    n_tokens = 0
    i = -1
    with open(out_dir / "tokens.bin", "wb") if write_tokens else _Discard() as fh:
        for i, ids in enumerate(tok.encode_documents(texts, disallowed="as_text")):
            row = tok.row(ids, max_len)
            n_tokens += len(ids)
            n_truncated += len(ids) + len(tok.row_prefix) + len(tok.row_suffix) > max_len
            j = i % block_rows
            block[j, : len(row)] = row
            block[j, len(row) :] = tok.pad_id
            lengths[i] = len(row)
            if j == block_rows - 1:
                fh.write(block.tobytes())
        if i + 1 != n_rows:
            raise RuntimeError(f"encoded {i + 1} rows, expected {n_rows}")
        fh.write(block[: (i + 1) % block_rows].tobytes())
    np.save(out_dir / "lengths.npy", lengths)
    return {
        "shape": [n_rows, max_len],
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_truncated": n_truncated,
        "mean_length": float(lengths.mean()) if n_rows else 0.0,
    }


def encode_stream(
    texts: Iterable[str],
    n_docs: int,
    tok: _Encoder,
    out_dir: Path,
    chunk_tokens: int = 1 << 20,
    *,
    write_tokens: bool = True,
) -> dict:
    """clm / mlm: one flat stream, each document followed by <|endoftext|>; offsets mark document starts."""
    dtype = token_dtype(tok.vocab_size)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    buffer: list[int] = []
    total = 0
    with open(out_dir / "tokens.bin", "wb") if write_tokens else _Discard() as fh:
        for i, ids in enumerate(tok.encode_documents(texts, disallowed="as_text")):
            total += len(ids) + 1
            offsets[i + 1] = total
            if write_tokens:
                buffer.extend(ids)
                buffer.append(tok.eot_id)
                if len(buffer) >= chunk_tokens:
                    fh.write(np.asarray(buffer, dtype=dtype).tobytes())
                    buffer.clear()
        fh.write(np.asarray(buffer, dtype=dtype).tobytes())
    np.save(out_dir / "offsets.npy", offsets)
    return {"shape": [total], "dtype": dtype.name, "n_tokens": total, "n_truncated": 0}


class _Discard:
    """A file that writes nothing (encode.mode: on_the_fly keeps only the index)."""

    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, data: bytes) -> int:
        return len(data)
