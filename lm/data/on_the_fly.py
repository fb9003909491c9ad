"""encode.mode: on_the_fly -- tokens made when a batch reads them, from the raw corpus and the tokenizer.

`lm encode` then writes only the index (classify: lengths.npy; clm / mlm: offsets.npy), the targets and
meta.json, no tokens.bin; `Encoded.open` gives `OnTheFlyTokens` as `tokens`, which answers the same indexing
the memmap answers (``tokens[rows, :width]`` for rows, ``tokens[lo:hi]`` for the stream) with the same
values: each document is read from its shard of data/raw/corpus.parquet and encoded exactly as `lm encode`
encodes it. So batches are identical to the memmap's for the same seed; the cost moves from disk to the
batch builder (a small LRU of decoded shards and encoded documents keeps neighbouring reads cheap).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from lm.errors import LmError

# decoded shards held at once: random batches touch every shard, so a corpus of up to 64 shards (512 MB of
# text at data.shard_mb 8) is decoded once per process; beyond that shards are decoded again and again
SHARDS_KEPT = 64
DOCS_KEPT = 16_384  # encoded documents held at once


def raw_manifest_hash(raw_dir: str | Path) -> str:
    """sha256 of data/raw/manifest.json, which changes whenever the downloaded texts do (it holds the source's
    fingerprint and counts)."""
    from lm.io import hash_file

    return hash_file(Path(raw_dir) / "manifest.json").hexdigest()


class OnTheFlyTokens:
    """Read-only token access for an on-the-fly encoding; see the module docstring."""

    def __init__(self, meta: dict, lengths: np.ndarray | None, offsets: np.ndarray | None):
        from lm.data.raw import RawCorpus
        from lm.tokenizer import load_tokenizer

        source = meta["source"]
        self.raw = RawCorpus.open(source["raw"])
        self.tok = load_tokenizer(Path(source["tokenizer"]))
        if self.tok.hash != meta["tokenizer_hash"]:
            raise LmError(
                f"{source['tokenizer']} is not the tokenizer the on-the-fly encoding was made with: re-run "
                f"`lm encode`"
            )
        if source.get("raw_manifest_sha256") != raw_manifest_hash(source["raw"]):
            raise LmError(
                f"{source['raw']} changed since the on-the-fly encoding was made: re-run `lm encode` "
                f"(`dvc repro` does)"
            )
        if self.raw.n_rows != int(meta["n_docs"]):
            raise LmError(
                f"{self.raw.path} has {self.raw.n_rows} rows, the encoding {meta['n_docs']}: "
                "re-run `lm encode`"
            )
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.ndim = len(self.shape)
        self.max_len = int(meta["max_len"])
        self.lengths, self.offsets = lengths, offsets
        self._starts = self.raw.shard_rows()
        if len(self._starts) > SHARDS_KEPT:
            from rich.console import Console

            Console(stderr=True).print(
                f"warning: encode.mode on_the_fly over {len(self._starts)} shards of {self.raw.path}: "
                f"random batches decode shards again and again beyond {SHARDS_KEPT}; encode.mode memmap "
                "is much faster for a corpus this size"
            )
        self._shards: OrderedDict[int, list[str]] = OrderedDict()
        self._docs: OrderedDict[int, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return self.shape[0]

    def _text(self, doc: int) -> str:
        s = int(np.searchsorted(self._starts, doc, side="right")) - 1
        if s not in self._shards:
            self._shards[s] = self.raw.read_shard(s, ["text"]).column(0).to_pylist()
            while len(self._shards) > SHARDS_KEPT:
                self._shards.popitem(last=False)
        self._shards.move_to_end(s)
        return self._shards[s][doc - int(self._starts[s])]

    def documents(self, docs: np.ndarray) -> list[list[int]]:
        """The token ids of each document (no <|cls|> or <|endoftext|>), as `lm encode` made them."""
        docs = [int(d) for d in docs]
        todo = sorted({d for d in docs if d not in self._docs})
        for d, ids in zip(
            todo, self.tok.encode_documents((self._text(d) for d in todo), disallowed="as_text")
        ):
            if self.offsets is not None and len(ids) + 1 != self.offsets[d + 1] - self.offsets[d]:
                raise LmError(
                    f"document {d} of {self.raw.path} no longer matches the encoding: re-run `lm encode`"
                )
            self._docs[d] = ids
        out = []
        for d in docs:
            self._docs.move_to_end(d)
            out.append(self._docs[d])
        while len(self._docs) > max(DOCS_KEPT, len(set(docs))):
            self._docs.popitem(last=False)
        return out

    def __getitem__(self, key):
        if self.lengths is not None:
            return self._rows(key)
        return self._stream(key)

    def _rows(self, key):
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.shape[0]))
        scalar = np.ndim(rows) == 0
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        block = np.full((len(rows), self.max_len), self.tok.pad_id, dtype=self.dtype)
        for j, ids in enumerate(self.documents(rows)):
            row = self.tok.row(ids, self.max_len)
            block[j, : len(row)] = row
        out = block[:, cols]
        return out[0] if scalar else out

    def _stream(self, key):
        if not isinstance(key, slice):
            raise TypeError("an on-the-fly token stream is read by slices")
        lo, hi, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("an on-the-fly token stream is read by contiguous slices")
        if hi <= lo:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.offsets, lo, side="right")) - 1
        last = int(np.searchsorted(self.offsets, hi, side="left"))  # documents first..last-1 cover [lo, hi)
        pieces = [
            np.asarray([*ids, self.tok.eot_id], dtype=self.dtype)
            for ids in self.documents(np.arange(first, last))
        ]
        base = int(self.offsets[first])
        return np.concatenate(pieces)[lo - base : hi - base]
