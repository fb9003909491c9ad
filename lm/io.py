"""Atomic file and directory writes, and checks that a stage's inputs exist.

A stage that dies half-way must leave either the old output or nothing, never a truncated file that the next
stage would trust; so everything is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lm.errors import LmError

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; give the directory normal permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    os.replace(tmp, path)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Move the finished directory `new` to `target`, replacing the one there: renames on one file system, so
    readers see the old tree or the new one, never a mixture (the old tree is renamed aside, then deleted)."""
    new, target = Path(new), Path(target)
    if not new.is_dir():
        raise FileNotFoundError(f"{new}: no finished directory to move to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def hash_file(path: str | Path, digest=None):
    """Feed a file to `digest` (default: a new sha256) in 1 MiB blocks and return the digest, so that files of
    any size are hashed in bounded memory (export checksums, source fingerprints)."""
    import hashlib

    digest = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest


def require(path: str | Path, producer: str) -> Path:
    """Fail with a one-line hint when a stage's input is missing."""
    path = Path(path)
    if not path.exists():
        raise LmError(f"{path} not found: run `{producer}` first (or `dvc repro`)")
    return path


def read_json(path: str | Path, producer: str) -> Any:
    path = require(path, producer)
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise LmError(f"{path} is not valid JSON ({err.msg}); re-run `{producer}`") from None
