"""Exact resume after SIGKILL: a training process killed at a (seeded) pseudo-random step (or while renaming a
checkpoint into place) and resumed with `lm train --resume` ends with bit-identical weights, export and
curves.

The kill is injected through a sitecustomize module on PYTHONPATH (KILL_HOOK), so the code under test is the
real stage, unpatched: the hook sends SIGKILL to its own process inside the N-th optimizer step, or at the
N-th rename of checkpoint.pt. The DDP version (torchrun --max-restarts) is in test_ddp.py.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env, tiny_params, write_fake_encoded, write_params

pytestmark = pytest.mark.slow

KILL_HOOK = """
import os
_spec = os.environ.get("LM_TEST_KILL_AT")  # "step:N" or "checkpoint:N"
if (_spec and os.environ.get("RANK", "0") == os.environ.get("LM_TEST_KILL_RANK", "0")
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
    import signal
    _where, _n = _spec.split(":")
    _signal = getattr(signal, os.environ.get("LM_TEST_KILL_SIGNAL", "SIGKILL"))
    _count = [0]

    def _maybe_die():
        _count[0] += 1
        if _count[0] == int(_n):
            os.kill(os.getpid(), _signal)

    if _where == "step":
        import torch.optim
        _step = torch.optim.AdamW.step

        def step(self, *args, **kwargs):
            _maybe_die()  # after backward, before the update: mid-step
            return _step(self, *args, **kwargs)

        torch.optim.AdamW.step = step
    else:
        _replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith("checkpoint.pt"):
                _maybe_die()  # the new checkpoint is fully written to its temporary file, not yet renamed
            return _replace(src, dst, *args, **kwargs)

        os.replace = replace
"""


def hook_env(tmp_path: Path, kill_at: str | None = None, rank: int = 0, signal: str = "SIGKILL") -> dict:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(KILL_HOOK)
    env = subprocess_env()
    env["PYTHONPATH"] = str(hook_dir) + ":" + env["PYTHONPATH"]
    env.pop("LM_TEST_KILL_AT", None)
    if kill_at:
        env["LM_TEST_KILL_AT"] = kill_at
        env["LM_TEST_KILL_RANK"] = str(rank)
        env["LM_TEST_KILL_SIGNAL"] = signal
    return env


def run_params(**extra) -> dict:
    return tiny_params(
        **{
            "task": "mlm",
            "train.batch_size": 4,
            "train.grad_accum_steps": 2,
            "train.epochs": 3,
            "train.eval_every": 3,
            "train.checkpoint_every": 2,
            "train.warmup_steps": 2,
            "train.threads": 1,
            "train.patience": 3,
            "model.dropout": 0.1,
            **extra,
        }
    )


def make_run(root: Path, raw: dict) -> Path:
    root.mkdir(parents=True)
    write_fake_encoded(root, raw["task"], n_docs=72)
    write_params(root / "params.yaml", raw)
    return root


def final_state(root: Path, where: str = "models") -> dict:
    return torch.load(root / where / "checkpoint.pt", map_location="cpu", weights_only=True)


STAGED = ".lm/staging/models"  # where a run's checkpoints live until it completes


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = final_state(a), final_state(b)
    assert ca["step"] == cb["step"]
    for name in ca["model"]:
        assert torch.equal(ca["model"][name], cb["model"][name]), name
    for group_a, group_b in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    assert ca["progress"]["log"]["table"][:, 1].tolist() == cb["progress"]["log"]["table"][:, 1].tolist()
    assert (a / "models" / "model.safetensors").read_bytes() == (
        b / "models" / "model.safetensors"
    ).read_bytes()
    for name in ("train_loss", "val_loss"):
        ta = (a / "reports/train/plots/metrics" / f"{name}.tsv").read_text()
        tb = (b / "reports/train/plots/metrics" / f"{name}.tsv").read_text()
        assert ta == tb, name  # each step once: nothing logged twice or lost across the kill
    assert not list((b / "models").glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = make_run(tmp_path_factory.mktemp("resume") / "whole", run_params())
    subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", "params.yaml"],
        cwd=root,
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root


@pytest.mark.parametrize("where", ["step", "checkpoint"])
def test_sigkill_then_lm_train_resume_is_bit_identical(tmp_path, reference, where):
    total = final_state(reference)["step"]
    rng = random.Random(0)  # a seeded step: a failure reproduces
    n = rng.randrange(3, total) if where == "step" else rng.randrange(2, total // 2)
    root = make_run(tmp_path / "killed", run_params())
    killed = subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", "params.yaml"],
        cwd=root,
        env=hook_env(tmp_path, f"{where}:{n}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, f"{where}:{n} was not killed: {killed.stderr[-2000:]}"
    saved = final_state(root, STAGED)["step"]
    assert saved < total and not (root / "models").exists()  # nothing published by the killed run
    if where == "checkpoint":
        assert list((root / STAGED).glob(".checkpoint.pt.*.tmp"))  # the half-done write it died in

    resumed = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train", "--resume"],
        cwd=root,
        env=hook_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in resumed.stderr.replace("\n", " ")
    assert_same_run(reference, root)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ctrl_c_keeps_the_last_results_and_the_next_run_resumes(tmp_path, reference):
    """Ctrl-C (SIGINT) in the middle of `lm train` (what `dvc repro` runs) leaves models/ and reports/train/
    as the previous run left them; the next plain `lm train` resumes from the interrupted run's last
    checkpoint and ends bit-identical to an uninterrupted run. A run with other params would start afresh
    instead."""
    root = make_run(tmp_path / "run", run_params(seed=1))
    first = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=root,
        env=hook_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: _tree(root / name) for name in ("models", "reports/train")}
    assert before["models"] and before["reports/train"]

    write_params(root / "params.yaml", run_params())  # the next experiment: the reference's params
    interrupted = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=root,
        env=hook_env(tmp_path, "step:7", signal="SIGINT"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert interrupted.returncode != 0
    assert {name: _tree(root / name) for name in ("models", "reports/train")} == before
    saved = final_state(root, STAGED)["step"]
    assert 0 < saved < 7

    resumed = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=root,
        env=hook_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in resumed.stderr.replace("\n", " ")
    assert_same_run(reference, root)
    assert not (root / ".lm").exists()  # the staging folder is gone once its outputs are in place

    write_params(root / "params.yaml", run_params(seed=1))
    subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=root,
        env=hook_env(tmp_path, "step:7", signal="SIGINT"),
        capture_output=True,
        timeout=300,
    )
    write_params(root / "params.yaml", run_params(seed=2))
    fresh = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=root,
        env=hook_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode == 0 and "resumed" not in fresh.stderr
    assert "afresh: the interrupted run's checkpoint is of other params (seed)" in fresh.stderr.replace(
        "\n", " "
    )
