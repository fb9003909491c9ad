"""Devices and machines, without launching anything: which device train.device picks (and the one-line errors
for a device this machine lacks), where a launcher put this process (torchrun, a SLURM step, or nothing),
whether `lm train` launches torchrun or trains as the rank it was given, the torchrun command of each
machine, and the params combinations refused at load time. The runs themselves are in test_ddp.py
(`test_multinode_*`) and, on a CUDA machine, test_gpu.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import subprocess_env, tiny_params, write_fake_encoded, write_params

from lm.config import ConfigError, parse_params
from lm.errors import LmError
from lm.train import distributed
from lm.train.distributed import first_host, float64_buffers_to_float32, pick_device, placement

# ------------------------------------------------------------------------------------------------- devices


def test_auto_picks_cuda_then_mps_for_one_process_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "_mps_available", lambda: False)
    assert pick_device("auto", 0) == torch.device("cpu")
    monkeypatch.setattr(distributed, "_mps_available", lambda: True)
    assert pick_device("auto", 0) == torch.device("mps")
    assert pick_device("auto", 0, world_size=2) == torch.device("cpu")  # no distributed backend on MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", 1, world_size=4) == torch.device("cuda", 1)
    assert pick_device("auto", 3, world_size=4) == torch.device(
        "cuda", 1
    )  # a launcher showing 2 GPUs per task
    assert pick_device("cpu", 0) == torch.device("cpu")


def test_a_device_this_machine_lacks_is_one_line_naming_train_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "_mps_available", lambda: False)
    for device in ("cuda", "mps"):
        with pytest.raises(LmError, match=f"train.device={device} .*set train.device: auto or cpu") as err:
            pick_device(device, 0)
        assert "\n" not in str(err.value)
    monkeypatch.setattr(distributed, "_mps_available", lambda: True)
    with pytest.raises(LmError, match="train.device=mps trains in one process"):
        pick_device("mps", 0, world_size=2)


def test_lm_train_with_a_missing_device_fails_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_fake_encoded(tmp_path, "classify")
    write_params(tmp_path / "params.yaml", tiny_params(**{"train.device": "cuda", "train.threads": 1}))
    out = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: train.device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False): set "
        "train.device: auto or cpu, or install a CUDA build of torch"
    ]


def test_float64_buffers_become_float32_for_mps_and_the_model_computes_the_same():
    """MPS has no float64: the sinusoidal table and slay's quadrature nodes are moved as float32; both are
    cast to the compute dtype at use, so a float32 model's output is unchanged up to float32 rounding."""
    from lm.model import build_model

    cfg = parse_params(tiny_params(**{"model.positions": "sinusoidal", "model.attention": "slay"})).model
    model = build_model(cfg, task="clm", vocab_size=64, max_len=16, pad_id=61, seed=0).eval()
    assert any(b.dtype == torch.float64 for b in model.buffers())
    ids = torch.randint(0, 60, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
        after = float64_buffers_to_float32(model)(ids).logits
    assert not any(b.dtype == torch.float64 for b in model.buffers())
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)


def test_amp_the_device_runs_passes_and_the_rest_is_one_line_naming_train_amp(monkeypatch):
    from lm.train import step
    from lm.train.step import check_amp

    for amp in ("none", "bf16", "fp16"):
        check_amp(torch.device("cpu"), amp)  # autocast on CPU does both; fp16's GradScaler works there
    assert step._grad_scaler_works(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(
        LmError,
        match="train.amp=bf16 needs a GPU with bfloat16 .*not Tesla V100-SXM2-16GB: set train.amp: fp16",
    ):
        check_amp(torch.device("cuda", 0), "bf16")
    monkeypatch.setattr(step, "_grad_scaler_works", lambda device: False)  # torch < 2.8 on MPS
    with pytest.raises(LmError, match="train.amp=fp16 on MPS needs a GradScaler there"):
        check_amp(torch.device("mps"), "fp16")

    def autocast_without(
        device_type, dtype
    ):  # what autocast does with a dtype it lacks: warn, run in float32
        import warnings

        warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.")

    monkeypatch.setattr(torch, "autocast", autocast_without)
    with pytest.raises(
        LmError, match="train.amp=fp16: this torch's autocast on cpu does not support torch.float16"
    ):
        check_amp(torch.device("cpu"), "fp16")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(
        LmError, match="train.amp=bf16: this torch has no autocast on mps: set train.amp: none"
    ):
        check_amp(torch.device("mps"), "bf16")


# ---------------------------------------------------------------------------------------------- launchers


def test_placement_of_a_plain_process_and_of_a_torchrun_worker():
    assert placement({}) == distributed.Placement(None)
    worker = placement({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (worker.launcher, worker.rank, worker.world_size, worker.local_rank, worker.local_world_size) == (
        "torchrun",
        5,
        8,
        1,
        4,
    )
    assert worker.master is None  # torchrun's MASTER_ADDR / MASTER_PORT: env://


SRUN = {
    "SLURM_JOB_ID": "77",
    "SLURM_NTASKS": "4",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_STEP_NODELIST": "gpu[03-04]",
}


def test_placement_of_a_slurm_task():
    task = placement(SRUN)
    assert (task.launcher, task.rank, task.world_size, task.local_rank, task.local_world_size) == (
        "slurm",
        3,
        4,
        1,
        2,
    )
    assert task.master == ("gpu03", distributed.SLURM_PORT)  # the step's first node
    assert placement(SRUN, endpoint="10.0.0.1:6000").master == ("10.0.0.1", 6000)  # train.rdzv_endpoint
    assert (
        placement({**SRUN, "MASTER_ADDR": "h", "MASTER_PORT": "1"}, endpoint="10.0.0.1:6000").master is None
    )
    # an sbatch script's own shell has SLURM_NTASKS and SLURM_PROCID too, but it is no step of several tasks
    batch_shell = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP_")} | {"SLURM_PROCID": "0"}
    assert placement(batch_shell).launcher is None
    assert (
        placement({**SRUN, "SLURM_STEP_NUM_TASKS": "1"}).launcher is None
    )  # `srun -n 1 lm train`: may launch
    assert (
        placement({**SRUN, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).launcher == "torchrun"
    )  # srun torchrun


@pytest.mark.parametrize(
    "nodes, first",
    [("gpu[03-05,09],cpu1", "gpu03"), ("node7", "node7"), ("a1,b2", "a1"), ("rack2-n[10,12]", "rack2-n10")],
)
def test_first_host_of_a_slurm_node_list(nodes, first):
    assert first_host(nodes) == first


def _train_stage(tmp_path, monkeypatch, **train) -> tuple[list, list]:
    """stages.train.run in tmp_path with launch_torchrun and train_here replaced by recorders."""
    import stages.train as stage

    write_fake_encoded(tmp_path, "classify")
    monkeypatch.chdir(tmp_path)
    launched, trained = [], []
    monkeypatch.setattr(stage, "launch_torchrun", lambda cfg, path, resume=False: launched.append(cfg))
    monkeypatch.setattr(stage, "train_here", lambda params, **kw: trained.append(params))
    params = parse_params(tiny_params(**{f"train.{k}": v for k, v in train.items()}))
    stage.run(params, Path("params.yaml"))
    return launched, trained


def test_lm_train_launches_torchrun_for_several_processes_or_machines(tmp_path, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    launched, trained = _train_stage(tmp_path / "b", monkeypatch)
    assert launched == [] and len(trained) == 1  # one process: trains here
    launched, trained = _train_stage(tmp_path / "c", monkeypatch, nproc=2)
    assert len(launched) == 1 and trained == []
    launched, trained = _train_stage(tmp_path / "d", monkeypatch, nnodes=2, rdzv_endpoint="h:1")
    assert len(launched) == 1 and trained == []


@pytest.mark.parametrize(
    "env",
    [
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
        },  # torchrun (or a launcher speaking its variables)
        {
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_PROCID": "1",
            "SLURM_LOCALID": "0",
            "SLURM_STEP_NODELIST": "n[1-2]",
        },
    ],
)
def test_an_externally_launched_process_trains_as_its_rank_and_launches_nothing(tmp_path, monkeypatch, env):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    launched, trained = _train_stage(tmp_path, monkeypatch, nproc=2, nnodes=2, rdzv_endpoint="h:1")
    assert launched == [] and len(trained) == 1


def _command(**train) -> list[str]:
    from stages.train import torchrun_command

    cfg = parse_params(tiny_params(**{f"train.{k}": v for k, v in train.items()})).train
    cmd = torchrun_command(cfg, Path("params.yaml"))
    return cmd[cmd.index("torch.distributed.run") + 1 :]


def test_torchrun_command_of_each_machine():
    assert _command(nproc=2)[:2] == ["--standalone", "--nproc-per-node=2"]
    c10d = _command(nproc=4, nnodes=3, node_rank=0, rdzv_endpoint="10.0.0.1:29400", max_restarts=2)
    assert c10d[:12] == [
        "--nnodes",
        "3",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "10.0.0.1:29400",
        "--rdzv-id",
        "lm",
        "--rdzv-conf",
        "is_host=1",
        "--nproc-per-node=4",
        "--max-restarts=2",
    ]
    assert "is_host=0" in _command(nnodes=3, node_rank=2, rdzv_endpoint="10.0.0.1:29400")
    static = _command(nproc=2, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400", rdzv_backend="static")
    assert static[:11] == [
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--rdzv-backend",
        "static",
        "--master-addr",
        "10.0.0.1",
        "--master-port",
        "29400",
        "--nproc-per-node=2",
    ]
    assert static[-4:] == ["-m", "stages.train", "--params", "params.yaml"]


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "train, message",
    [
        (
            {"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:1"},
            "train.node_rank (2) must be below train.nnodes (2)",
        ),
        ({"node_rank": 1}, "train.node_rank (1) must be below train.nnodes (1)"),
        ({"nnodes": 2}, "train.nnodes > 1 needs train.rdzv_endpoint: host:port of machine 0"),
        ({"nnodes": 2, "rdzv_endpoint": "10.0.0.1"}, "train.rdzv_endpoint must be host:port"),
        ({"rdzv_endpoint": "h:99999"}, "train.rdzv_endpoint must be host:port"),
        (
            {"nnodes": 2, "rdzv_endpoint": "h:1", "rdzv_backend": "static", "max_restarts": 1},
            "train.rdzv_backend=static cannot restart workers across machines",
        ),
        ({"device": "mps", "nproc": 2}, "train.device=mps trains in one process"),
        ({"device": "cpu", "backend": "nccl"}, "train.backend=nccl needs CUDA GPUs"),
        ({"device": "tpu"}, "train.device: Input should be 'auto', 'cpu', 'cuda' or 'mps'"),
        ({"nnodes": 0}, "train.nnodes: Input should be greater than or equal to 1"),
    ],
)
def test_bad_device_and_machine_combinations_fail_at_load_in_one_line(train, message):
    with pytest.raises(ConfigError) as err:
        parse_params(tiny_params(**{f"train.{k}": v for k, v in train.items()}))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lm_train_node_rank_option_is_validated_against_the_params(tmp_path):
    write_params(
        tmp_path / "params.yaml", tiny_params(**{"train.nnodes": 2, "train.rdzv_endpoint": "127.0.0.1:1"})
    )
    out = subprocess.run(
        [sys.executable, "-m", "lm.cli", "train", "--node-rank", "2"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: params.yaml: train.node_rank (2) must be below train.nnodes (2): machines "
        "are numbered 0 .. nnodes-1"
    )
