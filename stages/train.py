"""Stage `train`: train the model and write models/ (export + checkpoint) and reports/train/.

With train.nproc > 1 this re-launches itself under torchrun (`python -m torch.distributed.run
--standalone --max-restarts=train.max_restarts`), one process per rank; each rank then takes the same code
path with its own rank. When a worker dies, torchrun restarts the whole group (up to max_restarts times)
and every restarted worker (TORCHELASTIC_RESTART_COUNT > 0) resumes from the last checkpoint.

With train.nnodes > 1, `lm train` runs on every machine and each launches torchrun with its part
(`--nnodes --nproc-per-node`, and `--node-rank` for the static rendezvous), the machines meeting through
torchrun's own rendezvous at train.rdzv_endpoint (train.rdzv_backend: c10d, or static). A process that
torchrun or a SLURM step already started (lm.train.distributed.placement) trains as the rank it was given and
launches nothing.

A run writes into lm.paths.staged(models) and staged(reports/train) and replaces models/ and reports/train/
only when it completes, so an interrupted or failed run leaves the previous results as they were. Its
checkpoints stay in the staging directory: the next run resumes from the last one when the params and data
are those it was written with (exactly, see lm.train.loop), and starts afresh otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lm.config import Params, TrainConfig, parse_params
from lm.errors import host_port
from lm.io import require
from lm.paths import ENCODED, MODELS, SPLIT, STAGING, TOKENIZER, TRAIN_REPORTS, staged


def torchrun_command(train: TrainConfig, params_path: Path, *, resume: bool = False) -> list[str]:
    """The torchrun command line of this machine's part of the run: `--standalone` on one machine; on several,
    torchrun's rendezvous at train.rdzv_endpoint. c10d: machine 0 hosts the rendezvous store (is_host, not
    guessed from the host name) and torchrun numbers the machines itself (it ignores --node-rank; global
    rank 0, the one that writes models/ and reports/, may run on any machine); static: global ranks follow
    node_rank."""
    if train.nnodes == 1:
        where = ["--standalone"]
    elif train.rdzv_backend == "c10d":
        where = [
            "--nnodes",
            str(train.nnodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            str(train.rdzv_endpoint),
            "--rdzv-id",
            "lm",
            "--rdzv-conf",
            f"is_host={int(train.node_rank == 0)}",
        ]
    else:
        host, port = host_port(str(train.rdzv_endpoint))
        where = [
            "--nnodes",
            str(train.nnodes),
            "--node-rank",
            str(train.node_rank),
            "--rdzv-backend",
            "static",
            "--master-addr",
            host,
            "--master-port",
            str(port),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        f"--nproc-per-node={train.nproc}",
        f"--max-restarts={train.max_restarts}",
        "--monitor-interval=0.5",
        "-m",
        "stages.train",
        "--params",
        str(params_path),
        *(["--resume"] if resume else []),
    ]


def launch_torchrun(train: TrainConfig, params_path: Path, *, resume: bool = False) -> None:
    from lm.errors import LmError

    # workers must not share torchrun's rendezvous store: with it shared, a restarted group can read the
    # previous attempt's gloo/NCCL addresses and fail or hang (pytorch/pytorch#135712)
    env = {
        **os.environ,
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),
    }
    code = subprocess.call(torchrun_command(train, params_path, resume=resume), env=env)
    if code != 0:
        machine = f" on machine {train.node_rank} of {train.nnodes}" if train.nnodes > 1 else ""
        raise LmError(
            f"train: torchrun with {train.nproc} processes{machine} exited with code {code} "
            "(see the log above)"
        )


def run(
    params: Params,
    params_path: Path = Path("params.yaml"),
    out_dir=MODELS,
    reports_dir=TRAIN_REPORTS,
    resume: bool = False,
    node_rank: int | None = None,
) -> None:
    from lm.train.distributed import launched_externally

    if node_rank is not None:  # `lm train --node-rank R`: one params file shared by every machine
        params = parse_params(
            {**params.model_dump(), "train": {**params.train.model_dump(), "node_rank": node_rank}},
            params_path,
        )
    require(ENCODED / "meta.json", "lm encode")
    require(SPLIT / "train.npy", "lm split")
    if params.inert:
        print(f"train: {params.inert}", file=sys.stderr)
    if params.train.nproc * params.train.nnodes > 1 and not launched_externally():
        launch_torchrun(params.train, params_path, resume=resume)
        return
    train_and_publish(params, out_dir, reports_dir, resume=resume_mode(resume))


def resume_mode(requested: bool):
    """--resume: True (the staged checkpoint must exist and match). Otherwise 'auto': continue from the staged
    checkpoint when one matches the params and data (an interrupted run, or a worker torchrun restarted), else
    start afresh."""
    return True if requested else "auto"


def train_and_publish(params: Params, out_dir=MODELS, reports_dir=TRAIN_REPORTS, resume="auto") -> None:
    """Train into the staging directories, then (global rank 0) move the finished outputs into place."""
    from lm.io import replace_dir
    from lm.train.distributed import placement

    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    work_models, work_reports = staged(out_dir), staged(reports_dir)
    train_here(params, out_dir=work_models, reports_dir=work_reports, resume=resume)
    if placement().rank == 0 and work_models.is_dir():
        replace_dir(work_models, out_dir)
        replace_dir(work_reports, reports_dir)
        for folder in (STAGING, STAGING.parent):  # no empty staging folders left behind
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder, ignore_errors=True)


def train_here(params: Params, out_dir=MODELS, reports_dir=TRAIN_REPORTS, resume=False) -> None:
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    if params.train.ensemble == 1:
        _train_one(params, out_dir, reports_dir, resume)
    else:
        train_ensemble(params, out_dir, reports_dir, resume)


def _train_one(params: Params, out_dir: Path, reports_dir: Path, resume) -> None:
    from lm.train.loop import train

    result = train(
        params,
        encoded_dir=ENCODED,
        split_dir=SPLIT,
        tokenizer_dir=TOKENIZER,
        out_dir=out_dir,
        reports_dir=reports_dir,
        resume=resume,
    )
    if result is not None and result.history:
        from lm.viz.plots import plot_training_curves

        plot_training_curves(result.history, reports_dir / "curves.png")


MEMBER_DONE = "complete.json"


def train_ensemble(params: Params, out_dir: Path, reports_dir: Path, resume) -> None:
    """train.ensemble members one after another (seeds seed, seed+1, ...) into out_dir/members/<k>, then
    export their average to out_dir. Member 0's reports are reports_dir's; member k's reports_dir/members/<k>.
    --resume skips finished members (marked by complete.json) and resumes the one that was cut off; a plain
    run resumes each member whose checkpoint matches its params."""
    from lm.io import atomic_write_json
    from lm.model.export import export_ensemble
    from lm.train.distributed import distributed

    # one process group for all members (torchrun's store does not take a second rendezvous of the same ranks)
    with distributed(params.train.device, params.train.backend, params.train.rdzv_endpoint) as world:
        members_dir = out_dir / "members"
        if world.is_main:
            if not resume:
                shutil.rmtree(members_dir, ignore_errors=True)
                shutil.rmtree(reports_dir / "members", ignore_errors=True)
            for stale in (members_dir, reports_dir / "members"):  # members of a larger ensemble run before
                for extra in stale.glob("*"):
                    if not extra.name.isdigit() or int(extra.name) >= params.train.ensemble:
                        shutil.rmtree(extra, ignore_errors=True)
        world.barrier()
        dirs = []
        for k in range(params.train.ensemble):
            member_dir = members_dir / str(k)
            dirs.append(member_dir)
            if resume is True and (member_dir / MEMBER_DONE).exists():
                continue
            member_params = params.model_copy(update={"seed": params.seed + k})
            member_reports = reports_dir if k == 0 else reports_dir / "members" / str(k)
            # "auto": a member checkpoint of other params starts afresh, a later member may not have started
            _train_one(member_params, member_dir, member_reports, "auto" if resume else False)
            if world.is_main:
                atomic_write_json(member_dir / MEMBER_DONE, {"seed": member_params.seed})
            world.barrier()
        if world.is_main:
            export_ensemble(dirs, out_dir)
            _sum_member_costs(reports_dir, params.train.ensemble)


def _sum_member_costs(reports_dir: Path, members: int) -> None:
    """reports/train/metrics.json is member 0's; its cost figures become the ensemble's: the training wall
    time of every member, the highest peak memory, the parameters of all members."""
    import json

    from lm.io import atomic_write_json

    summaries = [
        json.loads((reports_dir / ("" if k == 0 else f"members/{k}") / "metrics.json").read_text())
        for k in range(members)
    ]
    total = dict(summaries[0], members=members)
    total["seconds"] = round(sum(m.get("seconds", 0.0) for m in summaries), 2)
    if all("peak_memory_mb" in m for m in summaries):
        total["peak_memory_mb"] = max(m["peak_memory_mb"] for m in summaries)
    if all("n_params" in m for m in summaries):
        total["n_params"] = sum(m["n_params"] for m in summaries)
    atomic_write_json(reports_dir / "metrics.json", total)


def _main() -> None:
    """Entry for torchrun workers: `python -m stages.train --params PATH [--resume]`."""
    import argparse

    from lm.config import ConfigError, load_params
    from lm.errors import LmError

    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    try:
        train_and_publish(load_params(args.params), resume=resume_mode(args.resume))
    except (ConfigError, LmError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _main()
