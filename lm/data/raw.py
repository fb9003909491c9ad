"""data/raw/corpus.parquet: the canonical corpus as Parquet row groups ("shards") of bounded size.

The download stage writes the corpus while it reads the source: canonical rows (id, text, target, identity
columns; see lm.data.sources) are buffered until they hold `data.shard_mb` MB of text, then written as one
row group, so the writer holds at most one shard plus one source chunk whatever the corpus' size. Every
reader goes through the shards one at a time (tokenizer training, encode, on-the-fly batches), so no stage
ever holds the whole corpus. A Parquet file written by pandas (one row group) reads the same way.

    with ShardWriter(path, columns, shard_bytes=8 << 20) as out:
        for frame in corpus_chunks:
            out.add(frame)
    raw = RawCorpus.open(path)
    for texts in raw.iter_texts(): ...
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from lm.errors import LmError
from lm.io import require

CORPUS = "corpus.parquet"  # the file inside data/raw (lm.paths.RAW)
PRODUCER = "lm download"


class ShardWriter:
    """Appends canonical frames to one Parquet file, one row group per `shard_bytes` of UTF-8 text (a row
    longer than a shard is a shard of its own). `shards` lists (rows, text bytes) of each written shard."""

    def __init__(self, path: str | Path, identity_columns: list[str], shard_bytes: int):
        import pyarrow as pa

        self.path = Path(path)
        self.shard_bytes = max(1, int(shard_bytes))
        self.schema = pa.schema(
            [
                ("id", pa.string()),
                ("text", pa.string()),
                ("target", pa.float64()),
                *[(c, pa.float64()) for c in identity_columns],
            ]
        )
        self._writer = None
        self._pending: list = []  # pa.Table pieces of the next shard
        self._pending_bytes = 0
        self.shards: list[tuple[int, int]] = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # a failed read: close the file, nothing more is written
            self._writer.close()

    def add(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(frame):
            return
        table = pa.Table.from_pandas(frame, schema=self.schema, preserve_index=False)
        sizes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
        while len(table):
            room = self.shard_bytes - self._pending_bytes
            cum = np.cumsum(sizes)
            take = int(np.searchsorted(cum, room, side="right"))  # rows that fit in what is left of the shard
            if take == 0 and not self._pending:
                take = 1  # one row longer than a shard: a shard of its own
            if take >= len(table):
                self._pending.append(table)
                self._pending_bytes += int(cum[-1])
                if self._pending_bytes >= self.shard_bytes:
                    self._flush()
                return
            self._pending.append(table.slice(0, take))
            self._pending_bytes += int(cum[take - 1]) if take else 0
            table, sizes = table.slice(take), sizes[take:]
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        shard = pa.concat_tables(self._pending).combine_chunks()
        if self._writer is None:
            # no dictionary for the text: it rarely repeats, and the sizes in the metadata stay text sizes
            self._writer = pq.ParquetWriter(
                self.path, self.schema, use_dictionary=["id"], compression="snappy"
            )
        self._writer.write_table(shard, row_group_size=max(1, shard.num_rows))
        self.shards.append((shard.num_rows, self._pending_bytes))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        self._flush()
        if self._writer is None:  # no rows at all: still a valid (empty) file
            import pyarrow.parquet as pq

            pq.write_table(self.schema.empty_table(), self.path)
        else:
            self._writer.close()
        self._writer = None


class RawCorpus:
    """A read-only view of data/raw/corpus.parquet, shard (row group) by shard."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        self.file = pq.ParquetFile(path)

    @classmethod
    def open(cls, raw_dir: str | Path) -> RawCorpus:
        return cls(require(Path(raw_dir) / CORPUS, PRODUCER))

    @property
    def n_rows(self) -> int:
        return self.file.metadata.num_rows

    @property
    def n_shards(self) -> int:
        return self.file.num_row_groups

    @property
    def columns(self) -> list[str]:
        return list(self.file.schema_arrow.names)

    def shard_rows(self) -> np.ndarray:
        """int64 [n_shards + 1]: the first row of each shard, then n_rows (for random access by row)."""
        counts = [self.file.metadata.row_group(i).num_rows for i in range(self.n_shards)]
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def shard_text_bytes(self, i: int) -> int:
        """The text column's uncompressed size in shard i (from the metadata: UTF-8 bytes + 4 per row)."""
        rg = self.file.metadata.row_group(i)
        j = self.columns.index("text")
        return int(rg.column(j).total_uncompressed_size)

    def read_shard(self, i: int, columns: list[str]):
        """One shard as a pyarrow Table of `columns`."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise LmError(f"{self.path} has no column {missing[0]!r}: re-run `lm download`")
        return self.file.read_row_group(i, columns=columns)

    def iter_shards(self, columns: list[str]) -> Iterator:
        for i in range(self.n_shards):
            yield self.read_shard(i, columns)

    def iter_texts(self) -> Iterator[str]:
        """Every text in corpus order, one shard in memory at a time."""
        for table in self.iter_shards(["text"]):
            yield from table.column(0).to_pylist()

    def sample_texts(self, max_bytes: int | None) -> Iterator[str]:
        """A sample of about `max_bytes` of text spread over the whole corpus: the same leading share of
        every shard (all texts when max_bytes is None or the corpus is smaller), so a sorted or drifting
        corpus is not represented by its beginning only. Deterministic."""
        if max_bytes is None:
            yield from self.iter_texts()
            return
        total = sum(self.shard_text_bytes(i) for i in range(self.n_shards))
        share = min(1.0, max_bytes / max(total, 1))
        for i in range(self.n_shards):
            n = self.file.metadata.row_group(i).num_rows
            take = min(n, math.ceil(share * n))
            if take:
                yield from self.read_shard(i, ["text"]).column(0).to_pylist()[:take]
