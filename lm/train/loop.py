"""The training loop shared by all tasks: single process or DDP, accumulation, AMP, clipping, schedule,
periodic validation with early stopping, periodic checkpoints, exact resume, best-model export.

`train()` builds the run's components once (plan.TrainData, trainee.Trainee, checkpoint.Checkpointer,
validation.Validator, logging.TrainLogger) and then loops over named phases: step (lm.train.step, which also
explains the loss normalisation), log every train.log_every steps (the only point where the host waits for the
device), validate when due, checkpoint when due, and at the end export. Only the loop advances the progress.

Exact resume: what a step computes depends only on the weights, the optimizer/scheduler/scaler state and
(seed, epoch, step, rank): the data order comes from lm.train.stream, mlm masks from a hash, and the torch RNG
(dropout) is re-seeded every step. A checkpoint (lm.train.state.TrainingState) saved at a step boundary
therefore continues bit-identically.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lm.config import Params
from lm.model.export import export_config, export_model
from lm.train.checkpoint import CHECKPOINT, Checkpointer, why_not_resumable
from lm.train.distributed import Dist, distributed
from lm.train.logging import TrainLogger, host_rows
from lm.train.plan import TrainData, open_data
from lm.train.state import Progress
from lm.train.step import check_amp, train_step
from lm.train.stream import step_seed
from lm.train.trainee import Trainee, build_trainee
from lm.train.validation import Validator, exported_state

Resume = bool | Literal["auto"]


@dataclass
class TrainResult:
    steps: int
    epochs_run: int
    best_val_loss: float | None
    final_train_loss: float | None
    seconds: float
    tokens_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per validation pass
    stopped_early: bool = False
    best_step: int | None = None
    step_log: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    resumed_from: int | None = None  # the checkpoint's step, when resumed
    best_val_roc_auc: float | None = None  # classify: the validation ROC-AUC of the exported weights
    select_by: str = "val_loss"  # the validation metric that picked them
    n_params: int | None = None  # parameters of the model
    peak_memory_mb: float | None = None  # the process's peak resident memory (CUDA: peak allocated)

    @classmethod
    def of(cls, progress: Progress, select_by: str, resumed_from: int | None) -> TrainResult:
        best_row = next((h for h in progress.history if h["step"] == progress.best_step), None)
        return cls(
            steps=progress.step,
            epochs_run=progress.epoch + (1 if progress.step_in_epoch else 0),
            best_val_loss=None if best_row is None else best_row["val_loss"],
            best_val_roc_auc=None if best_row is None else best_row.get("val_roc_auc"),
            select_by=select_by,
            final_train_loss=progress.history[-1]["train_loss"] if progress.history else None,
            seconds=progress.seconds,
            tokens_per_s=progress.tokens_seen / max(progress.seconds, 1e-9),
            history=list(progress.history),
            stopped_early=progress.stopped_early,
            best_step=progress.best_step,
            step_log=list(progress.log.rows),
            resumed_from=resumed_from,
        )

    def summary(self) -> dict[str, Any]:
        """reports/train/metrics.json."""
        return {
            "select_by": self.select_by,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            **({"best_val_roc_auc": self.best_val_roc_auc} if self.best_val_roc_auc is not None else {}),
            "final_train_loss": self.final_train_loss,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "seconds": round(self.seconds, 2),
            "n_params": self.n_params,
            "peak_memory_mb": self.peak_memory_mb,
        }


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_memory_mb(device: torch.device) -> float:
    """The cost figure `lm compare` shows: CUDA's peak allocated memory, else the process's peak resident set
    (what the operating system had to give the run, model and data included)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def seed_process(params: Params, world: Dist) -> None:
    """CPU threads shared among the processes, and the global generators seeded before anything is built."""
    torch.set_num_threads(params.train.threads or max(1, (os.cpu_count() or 1) // world.local_world_size))
    torch.manual_seed(params.seed)
    np.random.seed(params.seed & 0xFFFFFFFF)
    random.seed(params.seed)


@dataclass
class _Run:
    """The components of one run, built once by train() and used by every phase."""

    params: Params
    world: Dist
    data: TrainData
    trainee: Trainee
    checkpointer: Checkpointer
    validator: Validator
    logger: TrainLogger


def _run_steps(
    run: _Run, progress: Progress, best: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """Step until the plan is done or early stopping; log the steps' rows every train.log_every steps and
    before validating or saving (validating when due); checkpoint when due. Only this loop advances the
    progress. Returns the weights to export: the best validated so far on rank 0 (None on the other ranks)."""
    cfg, data = run.params.train, run.data
    checkpoint_every = cfg.checkpoint_every or cfg.eval_every
    started, seconds_before = time.perf_counter(), progress.seconds
    pending: list[dict[str, Any]] = []  # rows of the steps not logged yet, their numbers still on the device
    while progress.step < data.total_steps and not progress.stopped_early:
        if progress.step_in_epoch >= data.plan[progress.epoch]:  # the epoch is done
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
            continue
        pending.append(_step(run, progress))
        progress.step, progress.step_in_epoch = progress.step + 1, progress.step_in_epoch + 1
        validating = run.validator.due(progress.step)  # also after the last step: the loop ends logged
        saving = progress.step % checkpoint_every == 0 and progress.step < data.total_steps
        if validating or saving or progress.step % cfg.log_every == 0:  # the rows' numbers are needed
            best = _log(run, progress, pending, validating, best)
            pending = []
        progress.seconds = seconds_before + time.perf_counter() - started
        if saving and not progress.stopped_early:
            run.checkpointer.save(progress, best, finished=False)
    progress.seconds = seconds_before + time.perf_counter() - started
    return best


def _step(run: _Run, progress: Progress) -> dict[str, Any]:
    """The step at `progress`'s position, which it leaves as it is: this rank's batches and dropout seed are
    functions of the position (what makes a resume exact). Its log row, numbers on the device, with when it
    started and how long the host took."""
    t0 = time.perf_counter()
    cfg, world = run.params.train, run.world
    micro = run.data.step_batches(progress.epoch, progress.step_in_epoch)
    torch.manual_seed(step_seed(run.params.seed, progress.step, world.rank))  # dropout: a function of it
    row = train_step(
        run.trainee,
        run.data.objective,
        micro,
        step=progress.step,
        world=world,
        grad_clip=cfg.grad_clip,
        amp=cfg.amp,
    )
    return {**row, "started": t0, "seconds": time.perf_counter() - t0}


def _log(
    run: _Run,
    progress: Progress,
    pending: list[dict[str, Any]],
    validate: bool,
    best: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor] | None:
    """The log phase, for the steps since the last one: their rows read from the device (the loop's one wait
    for it) and recorded in the progress, the validation pass after the last of them when `validate`, and the
    rows logged. Returns the weights to export, updated when the validation found better ones."""
    rows = _record(progress, pending)
    if validate and run.validator.validate(run.trainee, progress, rows[-1]) and run.world.is_main:
        best = exported_state(run.trainee.model, run.trainee.average)
    for row in rows:
        progress.log.append(row)
        run.logger.log(row)
    return best


def _record(progress: Progress, pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged rows of the pending steps, their numbers copied from the device at once, recorded in the
    progress (tokens seen, the losses since the last validation). tokens_per_s: a GPU runs steps after the
    host has queued them, and the host waits for it here, so the steps share the wall time since the first of
    them started in proportion to the host's time for each (on a CPU: each step's own time)."""
    rows = host_rows(pending)
    wall = time.perf_counter() - rows[0]["started"]
    stretch = wall / max(sum(row["seconds"] for row in rows), 1e-9)
    for row in rows:
        tokens, seconds = row.pop("tokens"), row.pop("seconds") * stretch
        del row["started"]
        row["tokens_per_s"] = tokens / max(seconds, 1e-9)
        progress.tokens_seen += int(tokens)
        progress.running.append(row["train_loss"])
    return rows


def export_best(
    trainee: Trainee,
    best: dict[str, torch.Tensor] | None,
    out_dir: Path,
    config: dict[str, Any],
    tokenizer_dir: Path,
) -> None:
    """The export phase (rank 0): the selected weights (the last ones when validation never picked any)."""
    if best is not None:
        trainee.model.load_state_dict(best)
    export_model(trainee.model, out_dir, config, tokenizer_dir)


def _header(params: Params, data: TrainData, trainee: Trainee, world: Dist) -> str:
    cfg = params.train
    return (
        f"[bold]train[/] task={params.task} attention={params.model.attention} "
        f"params={parameter_count(trainee.model):,} items={len(data.train_items)} "
        f"steps={data.total_steps} processes={world.world_size}{_machines(world)} device={world.device} "
        f"amp={cfg.amp}"
    )


def _machines(world: Dist) -> str:
    """' machines=N' when the processes run on more than one machine."""
    n = -(-world.world_size // max(1, world.local_world_size))
    return f" machines={n}" if n > 1 else ""


def train(
    params: Params,
    *,
    encoded_dir: Path,
    split_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    reports_dir: Path,
    resume: Resume = False,
) -> TrainResult | None:
    """Train per params; rank 0 writes out_dir (export + checkpoint) and reports_dir. Returns on rank 0.

    resume: False starts afresh (deleting a previous checkpoint); True continues from
    out_dir/checkpoint.pt (which must exist and match the params); "auto" continues when it exists and matches
    the params and data (an interrupted run; a worker restarted by torchrun --max-restarts) and starts afresh
    otherwise.
    """
    from rich.console import Console

    cfg = params.train
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    with distributed(cfg.device, cfg.backend, cfg.rdzv_endpoint) as world:
        check_amp(world.device, cfg.amp)
        seed_process(params, world)
        data = open_data(params, encoded_dir, split_dir, world)
        checkpoint = out_dir / CHECKPOINT
        resuming, stale = resume is True, None
        if resume == "auto":  # rank 0 decides for all: a worker on another machine may not see the file
            if world.is_main and checkpoint.exists():
                stale = why_not_resumable(checkpoint, params.model_dump(), data.fingerprint())
                resuming = stale is None
            resuming, stale = world.from_main((resuming, stale))
        trainee, init_note = build_trainee(params, data.enc, data.total_steps, world, fresh=not resuming)
        checkpointer = Checkpointer(
            checkpoint, trainee, params, data.fingerprint(), data.stream.global_batch, world
        )
        progress, best = checkpointer.begin(resuming)
        resumed_from = progress.step if resuming else None
        trainee.distribute(world, cfg.compile)  # after every rank has loaded the same weights

        console = Console(stderr=True, quiet=not world.is_main)
        logger = TrainLogger(
            world.is_main, reports_dir, data.total_steps, console, replay=progress.log if resuming else None
        )
        logger.print(
            _header(params, data, trainee, world)
            + (f" resumed at step {resumed_from}" if resuming else "")
            + init_note
            + (f" (afresh: the interrupted run's checkpoint is of other {stale})" if stale else "")
        )
        validator = Validator(params, data.objective, data.val_items, world, logger, data.total_steps)
        run = _Run(params, world, data, trainee, checkpointer, validator, logger)
        summary = None  # reports/train/metrics.json, once the run is complete
        try:
            best = _run_steps(run, progress, best)
            checkpointer.save(progress, best, finished=True)
            result = TrainResult.of(progress, validator.metric, resumed_from)
            result.n_params = parameter_count(trainee.model)
            result.peak_memory_mb = peak_memory_mb(world.device)
            if world.is_main:
                export_best(trainee, best, out_dir, export_config(params, data.enc), tokenizer_dir)
                summary = result.summary()
        finally:
            logger.close(summary)
        world.barrier()
        return result if world.is_main else None
