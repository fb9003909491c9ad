"""Stage `download`: read the configured corpus and write data/raw/corpus.parquet + manifest.json.

The corpus is read chunk by chunk and written as it comes, in shards (Parquet row groups) of data.shard_mb MB
of text (lm.data.raw), so a corpus larger than memory downloads in the memory of one shard.

DVC runs this stage on every `dvc repro` (a local source file is not a DVC dependency: its path is a param);
it re-reads the source only when the source's fingerprint (content hash, hub revision, params, code) differs
from the one data/raw was made from, so an unchanged source leaves data/raw and every later stage alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from lm.config import Params
from lm.io import atomic_dir, atomic_write_json
from lm.paths import RAW


def run(params: Params, out_dir=RAW) -> None:
    from rich.console import Console

    from lm.data.fingerprint import source_fingerprint
    from lm.data.raw import CORPUS, ShardWriter
    from lm.data.sources import open_corpus

    console = Console(stderr=True)
    out_dir = Path(out_dir)
    fingerprint = source_fingerprint(params.data, task=params.task, seed=params.seed)
    previous = _previous_fingerprint(out_dir)
    if previous is not None and _same_source(previous, fingerprint):
        console.print(f"download: {out_dir} is up to date ({_describe(fingerprint['source'])} unchanged)")
        return
    data = params.data
    if fingerprint["source"].get("revision"):  # read exactly the revision the fingerprint recorded
        data = data.model_copy(update={"hf_revision": fingerprint["source"]["revision"]})
    stream = open_corpus(data, task=params.task, seed=params.seed)
    with atomic_dir(out_dir) as tmp:  # the shards are written as the source is read: memory ~ one shard
        with ShardWriter(tmp / CORPUS, stream.identity_columns, int(data.shard_mb * 1e6)) as shards:
            for frame in stream:
                shards.add(frame)
        stats = stream.stats()
        manifest = {
            **stats.to_manifest(),
            "shards": {
                "n": len(shards.shards),
                "shard_mb": data.shard_mb,
                "rows": [n for n, _ in shards.shards],
            },
            "fingerprint": fingerprint,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    notes = []
    if stats.n_dropped_empty:
        notes.append(f"{stats.n_dropped_empty} empty rows dropped")
    encoding = stats.details.get("encoding")
    if encoding and encoding not in ("utf-8", "utf-8-sig"):
        notes.append(f"read as {encoding}, not UTF-8")
    if stats.details.get("documents") == "lines":
        notes.append("no blank lines: one document per line")
    console.print(
        f"download: {stats.n_kept} rows from {stats.source} -> {out_dir}/{CORPUS} "
        f"({len(shards.shards)} shard{'s' if len(shards.shards) != 1 else ''})"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
    if stats.identity_columns_missing:
        console.print(
            f"download: warning: data.identity_columns {stats.identity_columns_missing} are not in "
            f"{stats.source}; the bias report covers only {stats.identity_columns or 'none'} "
            f"(list the columns the data has, or [] for none)"
        )


def _previous_fingerprint(out_dir: Path) -> dict | None:
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("fingerprint") if (out_dir / "corpus.parquet").exists() else None


def _same_source(old: dict, new: dict) -> bool:
    if old.get("params") != new["params"] or old.get("code_sha256") != new["code_sha256"]:
        return False
    src_old, src_new = old.get("source", {}), new["source"]
    if src_new.get("kind") == "hf" and src_new.get("revision") is None:
        # the hub cannot be reached: keep what was downloaded from the same dataset (its revision is recorded)
        return src_old.get("kind") == "hf" and src_old.get("dataset") == src_new.get("dataset")
    return src_old == src_new


def _describe(source: dict) -> str:
    if source["kind"] == "hf":
        return f"hub dataset {source['dataset']} at revision {str(source.get('revision'))[:12]}"
    if "sha256" in source:
        return f"source sha256 {str(source['sha256'])[:12]}"
    return "embedded corpus and its params"
