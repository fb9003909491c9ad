"""Exact resume after SIGKILL: a training process killed at a (seeded) pseudo-random step (or while renaming a
checkpoint into place) and resumed with `lm train --resume` ends with bit-identical weights, export and curves.

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

KILL_HOOK = '''
import os
_spec = os.environ.get("LM_TEST_KILL_AT")  # "step:N" or "checkpoint:N"
if (_spec and os.environ.get("RANK", "0") == os.environ.get("LM_TEST_KILL_RANK", "0")
        and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
    import signal
    _where, _n = _spec.split(":")
    _count = [0]

    def _maybe_die():
        _count[0] += 1
        if _count[0] == int(_n):
            os.kill(os.getpid(), signal.SIGKILL)

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
'''


def hook_env(tmp_path: Path, kill_at: str | None = None, rank: int = 0) -> dict:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir(exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(KILL_HOOK)
    env = subprocess_env()
    env["PYTHONPATH"] = str(hook_dir) + ":" + env["PYTHONPATH"]
    env.pop("LM_TEST_KILL_AT", None)
    if kill_at:
        env["LM_TEST_KILL_AT"] = kill_at
        env["LM_TEST_KILL_RANK"] = str(rank)
    return env


def run_params(**extra) -> dict:
    return tiny_params(**{
        "task": "mlm", "train.batch_size": 4, "train.grad_accum_steps": 2, "train.epochs": 3,
        "train.eval_every": 3, "train.checkpoint_every": 2, "train.warmup_steps": 2, "train.threads": 1,
        "train.patience": 3, "model.dropout": 0.1, **extra,
    })


def make_run(root: Path, raw: dict) -> Path:
    root.mkdir(parents=True)
    write_fake_encoded(root, raw["task"], n_docs=72)
    write_params(root / "params.yaml", raw)
    return root


def final_state(root: Path) -> dict:
    return torch.load(root / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = final_state(a), final_state(b)
    assert ca["step"] == cb["step"]
    for name in ca["model"]:
        assert torch.equal(ca["model"][name], cb["model"][name]), name
    for group_a, group_b in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(group_a["exp_avg_sq"], group_b["exp_avg_sq"])
    assert ca["progress"]["log"]["table"][:, 1].tolist() == cb["progress"]["log"]["table"][:, 1].tolist()
    assert (a / "models" / "model.safetensors").read_bytes() == (b / "models" / "model.safetensors").read_bytes()
    for name in ("train_loss", "val_loss"):
        ta = (a / "reports/train/plots/metrics" / f"{name}.tsv").read_text()
        tb = (b / "reports/train/plots/metrics" / f"{name}.tsv").read_text()
        assert ta == tb, name  # each step once: nothing logged twice or lost across the kill
    assert not list((b / "models").glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = make_run(tmp_path_factory.mktemp("resume") / "whole", run_params())
    subprocess.run([sys.executable, "-m", "stages.train", "--params", "params.yaml"], cwd=root,
                   env=subprocess_env(), check=True, capture_output=True, timeout=300)
    return root


@pytest.mark.parametrize("where", ["step", "checkpoint"])
def test_sigkill_then_lm_train_resume_is_bit_identical(tmp_path, reference, where):
    total = final_state(reference)["step"]
    rng = random.Random(0)  # a seeded step: a failure reproduces
    n = rng.randrange(3, total) if where == "step" else rng.randrange(2, total // 2)
    root = make_run(tmp_path / "killed", run_params())
    killed = subprocess.run([sys.executable, "-m", "stages.train", "--params", "params.yaml"], cwd=root,
                            env=hook_env(tmp_path, f"{where}:{n}"), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, f"{where}:{n} was not killed: {killed.stderr[-2000:]}"
    saved = final_state(root)["step"]
    assert saved < total
    if where == "checkpoint":
        assert list((root / "models").glob(".checkpoint.pt.*.tmp"))  # the half-done write it died in

    resumed = subprocess.run([sys.executable, "-m", "lm.cli", "train", "--resume"], cwd=root,
                             env=hook_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {saved}" in resumed.stderr.replace("\n", " ")
    assert_same_run(reference, root)
