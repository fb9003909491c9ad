"""DDP is exact: 2 processes x batch B reach the same weights as 1 process x batch 2B, and only rank 0
writes files. Runs the real train stage under torchrun (gloo on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import subprocess_env, tiny_params, write_fake_encoded, write_params

pytestmark = pytest.mark.slow

DRIVER = """
import os, sys
params = os.path.abspath(sys.argv[1])
if os.environ.get("RANK", "0") != "0":
    os.chdir(os.environ["LM_TEST_RANK_DIR"])  # any file rank 1 writes lands here, where the test looks
sys.argv = ["stages.train", "--params", params]
from stages.train import _main
_main()
"""


def _params(task: str, batch: int) -> dict:
    return tiny_params(**{
        "task": task, "train.batch_size": batch, "train.epochs": 3, "train.eval_every": 2,
        "train.warmup_steps": 1, "model.dropout": 0.0, "model.attention_dropout": 0.0, "train.threads": 1,
    })


def _final_weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("task", ["classify", "clm"])
def test_two_processes_match_one_process_with_double_batch(tmp_path, task):
    env = subprocess_env()
    single, double = tmp_path / "single", tmp_path / "ddp"
    for root in (single, double):
        root.mkdir()
        write_fake_encoded(root, task, n_docs=72)
    write_params(single / "params.yaml", _params(task, batch=8))
    write_params(double / "params.yaml", _params(task, batch=4))
    rank_dir = tmp_path / "rank1"
    rank_dir.mkdir()
    (rank_dir / "data").symlink_to(double / "data")
    (double / "driver.py").write_text(DRIVER)

    subprocess.run([sys.executable, "-m", "stages.train", "--params", "params.yaml"], cwd=single, env=env,
                   check=True, capture_output=True)
    env_ddp = {**env, "LM_TEST_RANK_DIR": str(rank_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "driver.py", "params.yaml"],
        cwd=double, env=env_ddp, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _final_weights(single), _final_weights(double)
    assert a.keys() == b.keys()
    ckpt = torch.load(double / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["step"] >= 6  # several optimizer steps
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), f"{name}: max diff {(a[name] - b[name]).abs().max()}"
    # the weights did move: the comparison is not trivially between two initialisations
    init = torch.load(single / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert init["step"] == ckpt["step"]
    # only rank 0 wrote: rank 1 ran in rank_dir and left nothing there but the data link
    assert sorted(p.name for p in rank_dir.iterdir()) == ["data"]
    assert (double / "models" / "model.safetensors").exists()
    assert (double / "reports" / "train" / "metrics.json").exists()
