"""What the download stage read, as a fingerprint: the content hash of a local file or directory, the resolved
revision of a hub dataset, and the code and params that shape data/raw.

`data.source` is a param, so DVC alone never sees a local file change under an unchanged path. The download
stage therefore runs on every `dvc repro` (always_changed) and compares this fingerprint with the one in
data/raw/manifest.json: unchanged, it leaves data/raw untouched (and DVC skips everything after it); changed,
it re-reads the source, and every later stage re-runs because data/raw changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lm.config import DataConfig
from lm.io import hash_file

CODE = (
    "stages/download.py",
    "lm/data/sources.py",
    "lm/data/synthetic.py",
    "lm/data/text_encoding.py",
    "lm/data/fingerprint.py",
    "lm/data/raw.py",
    "lm/data/hub_cache.py",
)
NOT_DATA = {"threshold", "cache_dir", "cache_max_gb"}  # data params that do not change data/raw
REPO = Path(__file__).resolve().parents[2]


def sha256_path(path: Path) -> str:
    """Content hash of a file, or of a directory's files (relative names included), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f != path:
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        hash_file(f, digest)
    return digest.hexdigest()


def hub_revision(dataset: str, revision: str | None) -> str | None:
    """The commit a hub dataset id (at `revision`) points to now; None when the hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset, revision=revision, timeout=10).sha
    except Exception:  # offline, unknown id, private: the caller decides what an unknown revision means
        return None


def source_fingerprint(cfg: DataConfig, *, task: str, seed: int) -> dict[str, Any]:
    code = hashlib.sha256()
    for name in CODE:
        f = REPO / name
        code.update(f.read_bytes() if f.exists() else b"")
    out: dict[str, Any] = {
        "params": {"task": task, "seed": seed, **cfg.model_dump(exclude=NOT_DATA)},
        "code_sha256": code.hexdigest(),
    }
    source = cfg.source.strip()
    if source == "embedded":
        out["source"] = {"kind": "embedded"}
    elif source.startswith("hf:"):
        from lm.data.sources import _parse_hf

        ref, _ = _parse_hf(source[3:])
        if Path(ref).exists():
            out["source"] = {"kind": "hf-local", "sha256": sha256_path(Path(ref))}
        else:
            out["source"] = {"kind": "hf", "dataset": ref, "revision": hub_revision(ref, cfg.hf_revision)}
    else:
        path = Path(source).expanduser()
        out["source"] = {"kind": "file", "sha256": sha256_path(path) if path.is_file() else None}
    return out
