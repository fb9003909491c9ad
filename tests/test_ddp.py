"""DDP is exact: 2 processes reach the same weights as 1 process with the same global batch, for each task
(mlm masks and clm windows do not depend on the process), with accumulation under `no_sync`; evaluation is
sharded and all-reduced (same validation losses); only rank 0 writes files; and a worker SIGKILLed mid-run
is restarted by torchrun --max-restarts, resumes from the last checkpoint and ends bit-identical to an
uninterrupted run. Runs the real train stage under torchrun (gloo on CPU)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, subprocess_env, tiny_params, write_fake_encoded, write_params
from test_train_resume import hook_env

from lm.config import parse_params
from lm.model import build_model

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


def _params(task: str, batch: int, accum: int = 1, **extra) -> dict:
    return tiny_params(
        **{
            "task": task,
            "train.batch_size": batch,
            "train.grad_accum_steps": accum,
            "train.epochs": 3,
            "train.eval_every": 2,
            "train.warmup_steps": 1,
            "model.dropout": 0.0,
            "model.attention_dropout": 0.0,
            "train.threads": 1,
            **extra,
        }
    )


def _checkpoint(root: Path) -> dict:
    return torch.load(root / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)


def _train_one_and_two_processes(
    tmp_path: Path, task: str, single_params: dict, ddp_params: dict
) -> tuple[Path, Path, Path]:
    """Train on the same fake data in one process and under torchrun with 2; rank 1 runs in its own directory
    (returned third) so that any file it writes can be seen. Returns (single root, ddp root, rank-1 dir)."""
    env = subprocess_env()
    single, double = tmp_path / "single", tmp_path / "ddp"
    for root in (single, double):
        root.mkdir()
        write_fake_encoded(root, task, n_docs=72)
    write_params(single / "params.yaml", single_params)
    write_params(double / "params.yaml", ddp_params)
    rank_dir = tmp_path / "rank1"
    rank_dir.mkdir()
    (rank_dir / "data").symlink_to(double / "data")
    (double / "driver.py").write_text(DRIVER)
    subprocess.run(
        [sys.executable, "-m", "stages.train", "--params", "params.yaml"],
        cwd=single,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "driver.py",
            "params.yaml",
        ],
        cwd=double,
        env={**env, "LM_TEST_RANK_DIR": str(rank_dir)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return single, double, rank_dir


@pytest.mark.parametrize("task, batch, accum", [("classify", 4, 1), ("mlm", 2, 2), ("clm", 2, 2)])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, task, batch, accum):
    single, double, rank_dir = _train_one_and_two_processes(
        tmp_path, task, _params(task, batch=8), _params(task, batch=batch, accum=accum)
    )

    one, two = _checkpoint(single), _checkpoint(double)
    assert one["step"] == two["step"] >= 6  # several optimizer steps
    a, b = one["model"], two["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), (
            f"{name}: max diff {(a[name] - b[name]).abs().max()}"
        )
    # the weights did move: the comparison is not trivially between two initialisations
    init = build_model(
        parse_params(_params(task, batch=8)).model,
        task=task,
        vocab_size=64,
        max_len=16,
        pad_id=SPECIALS["<|pad|>"],
        seed=0,
    ).state_dict()
    assert all(
        not torch.allclose(a[n], init[n], atol=1e-4)
        for n in ("trunk.tok_emb.weight", "trunk.final_norm.weight")
    )
    losses = [one["progress"]["log"]["table"][:, 1], two["progress"]["log"]["table"][:, 1]]
    assert torch.allclose(*losses, rtol=1e-5) and losses[0][0] != losses[0][-1]
    # sharded, all-reduced validation: the same validation losses as one process evaluating everything
    val = [[h["val_loss"] for h in c["progress"]["history"]] for c in (one, two)]
    assert len(val[0]) >= 3 and val[0] == pytest.approx(val[1], rel=1e-5)
    # only rank 0 wrote: rank 1 ran in rank_dir and left nothing there but the data link
    assert sorted(p.name for p in rank_dir.iterdir()) == ["data"]
    assert (double / "models" / "model.safetensors").exists()
    assert (double / "reports" / "train" / "metrics.json").exists()


def test_a_killed_worker_is_restarted_and_the_run_resumes_exactly(tmp_path):
    """train.max_restarts=1: rank 1 SIGKILLs itself at a (seeded) pseudo-random step; torchrun stops rank 0,
    restarts both, and both resume from the last checkpoint (TORCHELASTIC_RESTART_COUNT > 0)."""
    raw = _params(
        "classify",
        batch=2,
        accum=2,
        **{
            "train.nproc": 2,
            "train.max_restarts": 1,
            "train.checkpoint_every": 2,
            "train.eval_every": 3,
            "model.dropout": 0.1,
        },
    )
    runs = {}
    for name in ("whole", "killed"):
        root = tmp_path / name
        root.mkdir()
        write_fake_encoded(root, "classify", n_docs=72)
        write_params(root / "params.yaml", raw)
        runs[name] = root
    whole = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=runs["whole"],
        env=hook_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    total = _checkpoint(runs["whole"])["step"]
    n = random.Random(0).randrange(3, total)  # a seeded step: a failure reproduces
    killed = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=runs["killed"],
        env=hook_env(tmp_path, f"step:{n}", rank=1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = killed.stderr.replace("\n", " ")
    assert killed.returncode == 0, f"step:{n}: {killed.stderr[-3000:]}"
    assert "resumed at step" in log, f"step:{n}: no resume in the log: {killed.stderr[-3000:]}"
    a, b = _checkpoint(runs["whole"]), _checkpoint(runs["killed"])
    assert a["step"] == b["step"] == total
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"step:{n}: {name}"
    assert a["progress"]["log"]["table"][:, 1].tolist() == b["progress"]["log"]["table"][:, 1].tolist()
    assert not list((runs["killed"] / "models").glob(".*.tmp"))


def test_an_ensemble_trains_under_torchrun_like_in_one_process(tmp_path):
    """train.ensemble=2 with 2 processes: the members share one process group (no second rendezvous) and the
    exported ensemble scores like the one-process ensemble with the same global batch."""
    from lm.model.export import load_exported

    single, double, rank_dir = _train_one_and_two_processes(
        tmp_path,
        "classify",
        _params("classify", batch=8, **{"train.ensemble": 2}),
        _params("classify", batch=4, **{"train.ensemble": 2}),
    )
    one, _ = load_exported(single / "models")
    two, config = load_exported(double / "models")
    assert config["ensemble"]["seeds"] == [0, 1]
    ids = torch.randint(0, 60, (6, 12))
    ids[:, 0] = SPECIALS["<|cls|>"]
    with torch.no_grad():
        assert torch.allclose(one(ids).logits, two(ids).logits, atol=1e-4)
    assert sorted(p.name for p in rank_dir.iterdir()) == ["data"]


# ------------------------------------------------------------------------------------------- several machines


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("data", "params.yaml"))


@pytest.fixture(scope="module")
def one_machine_of_two(tmp_path_factory) -> Path:
    """`lm train` with train.nproc=2 on one machine (torchrun --standalone): the reference run."""
    one = tmp_path_factory.mktemp("one")
    write_fake_encoded(one, "clm", n_docs=72)
    write_params(one / "params.yaml", _params("clm", batch=2, accum=2, **{"train.nproc": 2}))
    single = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=one,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    return one


@pytest.mark.parametrize("rdzv_backend", ["c10d", "static"])
def test_multinode_two_machines_of_one_process_match_one_machine_of_two(
    tmp_path, one_machine_of_two, rdzv_backend
):
    """Two `lm train` launchers on 127.0.0.1 (train.nnodes=2 x train.nproc=1, each in its own directory, as
    two machines would be) meet through torchrun's rendezvous and train the same model, bit for bit, as one
    launcher of 2 processes; only global rank 0 writes models/ and reports/ (static: on machine 0; c10d
    numbers the machines itself), the other machine writes nothing."""
    env, one = subprocess_env(), one_machine_of_two
    endpoint = f"127.0.0.1:{_free_port()}"
    machines = [tmp_path / f"machine{k}" for k in range(2)]
    for k, root in enumerate(machines):
        root.mkdir()
        (root / "data").symlink_to(one / "data")
        write_params(
            root / "params.yaml",
            _params(
                "clm",
                batch=2,
                accum=2,
                **{
                    "train.nnodes": 2,
                    "train.node_rank": k,
                    "train.rdzv_endpoint": endpoint,
                    "train.rdzv_backend": rdzv_backend,
                },
            ),
        )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "lm.cli", "train"],
            cwd=root,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for root in reversed(machines)
    ]
    try:
        logs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(log[-3000:] for log in logs)

    wrote = [root for root in machines if (root / "models").exists()]
    assert len(wrote) == 1, [_outputs(root) for root in machines]
    if rdzv_backend == "static":
        assert wrote == machines[:1]  # global ranks follow train.node_rank
    assert _outputs(wrote[0]) == ["models", "reports"]
    assert _outputs(next(root for root in machines if root not in wrote)) == []
    a, b = _checkpoint(one), _checkpoint(wrote[0])
    assert a["step"] == b["step"] >= 6
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), (
            f"{name}: max diff {(a['model'][name] - b['model'][name]).abs().max()}"
        )
    assert a["progress"]["log"]["table"][:, 1].tolist() == b["progress"]["log"]["table"][:, 1].tolist()
