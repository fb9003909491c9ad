"""Shared fixtures: tiny params, synthetic encoded data, and where ../shared/data lives.

Seeded randomness everywhere: every test starts from the same global RNG states (`random`, numpy, torch),
and Hypothesis runs derandomized (the "ci" profile, the default: the same examples on every run, so a
failure reproduces); `HYPOTHESIS_PROFILE=explore` searches with fresh random examples instead.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SPECIALS = {"<|endoftext|>": 60, "<|pad|>": 61, "<|cls|>": 62, "<|mask|>": 63}


def tiny_params(**overrides) -> dict:
    """A params dict for tiny, fast runs; `overrides` maps dotted keys to values."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["n_rows"] = 400
    raw["tokenizer"]["vocab_size"] = 300
    raw["encode"]["max_len"] = 32
    raw["model"].update(d_model=32, n_layers=1, n_heads=2, d_ff=64)
    raw["train"].update(batch_size=16, epochs=1, eval_every=5, warmup_steps=2, min_steps=None, ensemble=1)
    raw["viz"].update(n_examples=1, max_new_tokens=8, prompts=["The"])
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return raw


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def write_fake_encoded(root: Path, task: str, n_docs: int = 64, max_len: int = 16, seed: int = 0) -> None:
    """data/encoded + data/split + data/tokenizer stand-ins with random tokens (vocab 64: 60 ordinary + 4
    specials)."""
    rng = np.random.default_rng(seed)
    enc = root / "data" / "encoded"
    enc.mkdir(parents=True)
    lengths = rng.integers(4, max_len + 1, n_docs).astype(np.int32)
    targets = rng.random(n_docs).astype(np.float32)
    if task in ("clm", "mlm"):  # packed stream (mlm windows add <|cls|> at batch time)
        docs = [rng.integers(0, 60, n - 1).tolist() + [SPECIALS["<|endoftext|>"]] for n in lengths]
        flat = np.array([t for d in docs for t in d], dtype=np.uint16)
        flat.tofile(enc / "tokens.bin")
        np.save(enc / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        shape = [len(flat)]
    else:
        rows = np.full((n_docs, max_len), SPECIALS["<|pad|>"], dtype=np.uint16)
        for i, n in enumerate(lengths):
            rows[i, 0] = SPECIALS["<|cls|>"]
            rows[i, 1:n] = rng.integers(0, 60, n - 1)
        rows.tofile(enc / "tokens.bin")
        np.save(enc / "lengths.npy", lengths)
        shape = [n_docs, max_len]
    np.save(enc / "targets.npy", targets)
    meta = {
        "task": task,
        "dtype": "uint16",
        "shape": shape,
        "n_docs": n_docs,
        "max_len": max_len,
        "vocab_size": 64,
        "special_ids": SPECIALS,
        "tokenizer_hash": "fake",
    }
    (enc / "meta.json").write_text(json.dumps(meta))
    split = root / "data" / "split"
    split.mkdir(parents=True)
    idx = rng.permutation(n_docs)
    n_val = n_docs // 8
    np.save(split / "val.npy", np.sort(idx[:n_val]))
    np.save(split / "test.npy", np.sort(idx[n_val : 2 * n_val]))
    np.save(split / "train.npy", np.sort(idx[2 * n_val :]))
    tok = root / "data" / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "special_tokens.json").write_text(json.dumps(SPECIALS))


@pytest.fixture(autouse=True)
def _seeded_rngs():
    """The same global RNG states at the start of every test, whatever ran before it."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread avoids oversubscribing the shared cores (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def hf_quiet(one_thread):
    """One thread, and transformers' load reports silenced (both restored afterwards): for the tests that
    build tiny transformers models beside lm's."""
    import transformers

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(level)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_checked(args: list[str], cwd: Path, env: dict, check: bool = True, timeout: float = 900):
    """Run a command; on failure an AssertionError with the tail of its output."""
    import subprocess

    proc = subprocess.run(
        args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def project_repo(root: Path, raw_params: dict, tmp_path_factory) -> dict:
    """A copy of the tracked project files (no reports, tests or benchmarks) in a fresh git repository at
    `root`, with `raw_params` as params.yaml, committed. Returns the environment to run `dvc` and `lm` in."""
    import shutil
    import subprocess
    import sys

    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if rel.startswith(("reports/", "tests/", "benchmarks/")) or not (REPO / rel).exists():
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest)
    write_params(root / "params.yaml", raw_params)
    env = subprocess_env()
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvc-site-cache"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    env["DVC_NO_ANALYTICS"] = "1"
    run_checked(["git", "init", "-q"], root, env)
    run_checked(["git", "config", "user.email", "test@lm.local"], root, env)
    run_checked(["git", "config", "user.name", "lm test"], root, env)
    run_checked(["dvc", "config", "core.analytics", "false"], root, env)
    run_checked(["git", "add", "-A"], root, env)
    run_checked(["git", "commit", "-qm", "tiny"], root, env)
    return env


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu`-marked tests are skipped, not failed, on a machine without CUDA."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu:
            item.add_marker(skip)
