"""A local cache of a hub dataset's data files (data.cache_dir), evicted least-recently-used beyond
data.cache_max_gb.

A streamed hub corpus (FineWeb, a Wikipedia dump) is hundreds of Parquet files. Streaming them straight from
the hub re-downloads every file on every `lm download`; keeping them all fills the disk. So each data file is
fetched once into `<cache_dir>/<owner>__<name>/<revision>/<path in the repo>` and read from there; a file's
modification time is its last use, and after each fetch the least recently used files of the whole cache are
deleted until it fits in `max_bytes` (the file just fetched always stays, even when it alone is larger).

`data_files` and `fetch` are the only functions that reach the hub (tests replace them with local copies).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from lm.errors import LmError


def data_files(dataset: str, config: str | None, split: str, revision: str | None) -> list[str]:
    """Paths inside the dataset repository of the data files of (config, split), in order, as `datasets`
    resolves them from the dataset card."""
    import datasets

    builder = datasets.load_dataset_builder(dataset, config, revision=revision)
    files = (builder.config.data_files or {}).get(split)
    if not files:
        splits = ", ".join(builder.config.data_files or {}) or "none"
        raise LmError(
            f"data.source hf:{dataset}: no data files for split {split!r} (splits: {splits}); set "
            f"data.hf_split"
        )
    marker = f"datasets/{dataset}"
    out = []
    for url in files:  # hf://datasets/<owner>/<name>@<revision>/<path>
        tail = str(url).split(marker, 1)[-1]
        out.append(tail.split("/", 1)[1] if tail.startswith("@") else tail.lstrip("/"))
    return out


def fetch(dataset: str, filename: str, revision: str | None, dest: Path) -> None:
    """Download one data file of a hub dataset to `dest`."""
    import shutil

    from huggingface_hub import hf_hub_download

    got = hf_hub_download(
        dataset,
        filename,
        repo_type="dataset",
        revision=revision,
        cache_dir=dest.parent / ".hub",
        local_dir=None,
    )
    shutil.copyfile(got, dest)
    shutil.rmtree(dest.parent / ".hub", ignore_errors=True)


def cache_key(dataset: str, revision: str | None) -> str:
    return f"{dataset.replace('/', '__')}/{revision or 'main'}"


class ShardCache:
    """Files under `root`, at most `max_bytes` in all, the least recently used deleted first."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._clock = 0

    def _touch(self, path: Path) -> None:
        self._clock = max(time.time_ns(), self._clock + 1)  # strictly increasing: the order of use is kept
        os.utime(path, ns=(self._clock, self._clock))

    def get(self, name: str, fetch: Callable[[Path], None]) -> Path:
        """The cached file `name` (a relative path), fetched by `fetch(dest)` when absent; marks it used."""
        path = self.root / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            try:
                fetch(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        self._touch(path)
        self.evict(keep=path)
        return path

    def files(self) -> list[Path]:
        """Cached files, least recently used first."""
        found = [
            p
            for p in self.root.rglob("*")  # not partial downloads (.name.part) or the hub client's .hub/
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        ]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least-recently-used files until the cache fits in max_bytes; return what was deleted."""
        files = self.files()
        total = sum(p.stat().st_size for p in files)
        gone = []
        for p in files:
            if total <= self.max_bytes:
                break
            if keep is not None and p == keep:
                continue
            total -= p.stat().st_size
            p.unlink()
            gone.append(p)
        return gone
