"""The encoded corpus on disk: token memmaps plus a meta.json that says how to read them.

Layout of data/encoded/ (written once by `lm encode`, read through np.memmap by training and evaluation):

- classify: ``tokens.bin`` is a C-order ``[n_rows, max_len]`` array, one row per document:
  ``<|cls|>`` then the document's tokens, truncated to max_len and right-padded with ``<|pad|>``;
  ``lengths.npy`` (int32 ``[n_rows]``) is the number of real tokens in each row.
- clm / mlm: ``tokens.bin`` is one flat ``[n_tokens]`` stream, every document followed by ``<|endoftext|>``;
  ``offsets.npy`` (int64 ``[n_docs + 1]``) gives where each document starts, so a split can pick documents.
- ``targets.npy`` (float32 ``[n_rows]``, NaN when absent): the raw toxicity score per document.

The dtype is uint16 when every id fits (vocab <= 65,536: half the disk and page cache of int32), else
uint32. ``meta.json`` records task, dtype, shape, vocab size, special ids, max length, counts and the
tokenizer's hash so a stale encoding is detected instead of silently mis-read.

With encode.mode: on_the_fly there is no ``tokens.bin``: ``meta.json`` says ``"mode": "on_the_fly"`` and names
the raw corpus and tokenizer, and ``tokens`` makes the same values from them when read (lm.data.on_the_fly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lm.errors import LmError
from lm.io import atomic_write_json, read_json, require
from lm.special_tokens import CLS, EOT, MASK, PAD

PRODUCER = "lm encode"


def meta_roles(meta: dict) -> dict[str, int | None]:
    """The pipeline's roles (cls, sep, pad, mask, eot) -> ids, as `lm encode` recorded them (an encoding or
    export made before roles were recorded names them by lm's special tokens)."""
    if "roles" in meta:
        return meta["roles"]
    ids = meta["special_ids"]
    return {"cls": ids.get(CLS), "sep": None, "pad": ids.get(PAD), "mask": ids.get(MASK), "eot": ids.get(EOT)}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class Encoded:
    """A read-only view of data/encoded/ (memmaps; nothing is loaded until indexed)."""

    root: Path
    meta: dict
    tokens: np.memmap  # or lm.data.on_the_fly.OnTheFlyTokens (encode.mode: on_the_fly), indexed the same way
    lengths: np.ndarray | None  # classify
    offsets: np.ndarray | None  # clm / mlm
    targets: np.ndarray

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def roles(self) -> dict[str, int | None]:
        return meta_roles(self.meta)

    @property
    def pad_id(self) -> int:
        return int(self.roles["pad"])

    @staticmethod
    def write_meta(
        root: str | Path,
        *,
        task: str,
        layout: dict,
        n_docs: int,
        max_len: int,
        vocab_size: int,
        special_ids: dict[str, int],
        tokenizer_hash: str,
        targets: np.ndarray,
        roles: dict[str, int | None] | None = None,
    ) -> None:
        """Write meta.json and targets.npy beside the token files that `layout` describes (dtype, shape,
        counts from encode_rows / encode_stream): the one place that writes what `open` reads."""
        root = Path(root)
        np.save(root / "targets.npy", np.asarray(targets, dtype=np.float32))
        atomic_write_json(
            root / "meta.json",
            {
                "task": task,
                "layout": "rows" if task == "classify" else "stream",
                **layout,
                "n_docs": n_docs,
                "max_len": max_len,
                "vocab_size": vocab_size,
                "special_ids": special_ids,
                "tokenizer_hash": tokenizer_hash,
                "roles": roles if roles is not None else meta_roles({"special_ids": special_ids}),
            },
        )

    @classmethod
    def open(cls, root: str | Path) -> Encoded:
        root = Path(root)
        meta = read_json(root / "meta.json", PRODUCER)
        dtype = np.dtype(meta["dtype"])
        shape = tuple(meta["shape"])
        lengths = np.load(root / "lengths.npy") if (root / "lengths.npy").exists() else None
        offsets = np.load(root / "offsets.npy") if (root / "offsets.npy").exists() else None
        targets = np.load(require(root / "targets.npy", PRODUCER))
        if meta.get("mode") == "on_the_fly":
            from lm.data.on_the_fly import OnTheFlyTokens

            return cls(root, meta, OnTheFlyTokens(meta, lengths, offsets), lengths, offsets, targets)
        path = require(root / "tokens.bin", PRODUCER)
        expected = int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size != expected:
            raise LmError(
                f"{path} has {path.stat().st_size} bytes, meta.json says {expected}: re-run `lm encode`"
            )
        tokens = np.memmap(path, dtype=dtype, mode="r", shape=shape)
        return cls(root, meta, tokens, lengths, offsets, targets)

    def check_task(self, task: str) -> None:
        if self.task != task:
            raise LmError(
                f"{self.root} was encoded for task={self.task}, params say task={task}: re-run `lm encode`"
            )
