"""Turn the raw corpus into the token memmaps described in lm.data.encoded, streaming.

Texts are encoded in batches and written straight into the output file, so memory is bounded by one batch
of token lists, not by the corpus.
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

    def encode_documents(self, texts: Iterable[str], *, disallowed: str) -> Iterator[list[int]]: ...


def encode_rows(texts: Iterable[str], n_rows: int, tok: _Encoder, max_len: int, out_dir: Path) -> dict:
    """classify: one padded row per document, starting with <|cls|>, truncated to its first max_len tokens
    (the head of a comment carries its tone; the count of truncated rows goes to meta.json)."""
    dtype = token_dtype(tok.vocab_size)
    arr = np.memmap(out_dir / "tokens.bin", dtype=dtype, mode="w+", shape=(n_rows, max_len))
    lengths = np.zeros(n_rows, dtype=np.int32)
    n_truncated = 0
    n_tokens = 0
    i = -1
    for i, ids in enumerate(tok.encode_documents(texts, disallowed="as_text")):
        row = [tok.cls_id, *ids]
        n_tokens += len(ids)
        if len(row) > max_len:
            n_truncated += 1
            row = row[:max_len]
        arr[i, : len(row)] = row
        arr[i, len(row) :] = tok.pad_id
        lengths[i] = len(row)
    if i + 1 != n_rows:
        raise RuntimeError(f"encoded {i + 1} rows, expected {n_rows}")
    arr.flush()
    del arr
    np.save(out_dir / "lengths.npy", lengths)
    return {
        "shape": [n_rows, max_len],
        "dtype": dtype.name,
        "n_tokens": n_tokens,
        "n_truncated": n_truncated,
        "mean_length": float(lengths.mean()) if n_rows else 0.0,
    }


def encode_stream(texts: Iterable[str], n_docs: int, tok: _Encoder, out_dir: Path, chunk_tokens: int = 1 << 20) -> dict:
    """clm / mlm: one flat stream, each document followed by <|endoftext|>; offsets mark document starts."""
    dtype = token_dtype(tok.vocab_size)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    buffer: list[int] = []
    total = 0
    with open(out_dir / "tokens.bin", "wb") as fh:
        for i, ids in enumerate(tok.encode_documents(texts, disallowed="as_text")):
            buffer.extend(ids)
            buffer.append(tok.eot_id)
            total += len(ids) + 1
            offsets[i + 1] = total
            if len(buffer) >= chunk_tokens:
                fh.write(np.asarray(buffer, dtype=dtype).tobytes())
                buffer.clear()
        fh.write(np.asarray(buffer, dtype=dtype).tobytes())
    np.save(out_dir / "offsets.npy", offsets)
    return {"shape": [total], "dtype": dtype.name, "n_tokens": total, "n_truncated": 0}
