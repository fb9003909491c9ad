"""Stage `download`: read the configured corpus and write data/raw/corpus.parquet + manifest.json."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, atomic_write_json
from lm.paths import RAW


def run(params: Params, out_dir=RAW) -> None:
    from rich.console import Console

    from lm.data.sources import load_corpus

    df, stats = load_corpus(params.data, task=params.task, seed=params.seed)
    manifest = stats.to_manifest()
    with atomic_dir(out_dir) as tmp:
        df.to_parquet(tmp / "corpus.parquet", index=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    Console(stderr=True).print(
        f"download: {stats.n_kept} rows from {stats.source} -> {out_dir}/corpus.parquet"
        + (f" ({stats.n_dropped_empty} empty rows dropped)" if stats.n_dropped_empty else "")
    )
