"""The training loop shared by all tasks: single process or DDP, accumulation, AMP, clipping, schedule,
periodic validation with early stopping, periodic checkpoints, exact resume, best-model export.

Loss normalisation: every micro-batch returns a loss SUM and its target count; the count of the whole
accumulated step is all-reduced first, and each micro-batch backpropagates sum * world / global_count. DDP
averages gradients over ranks (dividing by world), so the update equals one big batch's mean loss exactly,
whatever the split into processes and micro-batches. Gradients are all-reduced once per optimizer step (DDP
`no_sync` on every micro-step but the last), and clipping sees the whole accumulated gradient.

Exact resume: what a step computes depends only on the weights, the optimizer/scheduler/scaler state and
(seed, epoch, step, rank): the data order comes from lm.train.data, mlm masks from a hash, and the torch RNG
(dropout) is re-seeded every step. A checkpoint saved at a step boundary therefore continues bit-identically.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lm.config import Params
from lm.data.batches import make_items
from lm.data.encoded import Encoded
from lm.data.objectives import ClassifyObjective, make_objective, to_device, train_labels
from lm.data.split import load_split
from lm.errors import LmError
from lm.model.export import export_config, export_model, unwrap
from lm.train.checkpoint import (
    CHECKPOINT, check_resumable, load_checkpoint, remove_stale_temporaries, rng_state, save_checkpoint,
    set_rng_state,
)
from lm.train.data import TrainStream, class_weights, step_seed
from lm.train.distributed import Dist, distributed
from lm.train.ema import WeightAverage
from lm.train.logging import StepLog, TrainLogger
from lm.train.optim import build_optimizer, build_scheduler

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


# train.min_steps: auto. A language model keeps improving for thousands of steps on a small corpus
# (TinyStories clm: perplexity 53 after 634 steps, 36 after 2040); a masked LM learns from only mask_prob of
# the positions, so it needs more (WikiText-2 mlm: validation loss 5.42 after 2000 steps, 4.72 after 3250 of
# 4000); a classifier on a few thousand labels peaks within ~2 epochs and then overfits.
AUTO_MIN_STEPS = {"classify": 600, "clm": 2000, "mlm": 4000}


def min_steps_for(params: Params) -> int | None:
    m = params.train.min_steps
    return AUTO_MIN_STEPS[params.task] if m == "auto" else m


def epochs_for(stream: TrainStream, epochs: int, min_steps: int | None, max_steps: int | None) -> int:
    """train.epochs, raised until the run makes at least train.min_steps optimizer steps: a small corpus
    (a few thousand windows) would otherwise stop after a few dozen updates, long before it has learnt
    what it can; a large one is unaffected. Capped at 10,000 epochs."""
    if not min_steps or stream.steps_in_epoch(0) == 0:
        return epochs
    target = min(min_steps, max_steps) if max_steps else min_steps
    epochs = max(epochs, min(-(-target // stream.steps_in_epoch(0)), 10_000))
    while sum(stream.schedule(epochs, max_steps)) < target and epochs < 10_000:  # window counts vary by epoch
        epochs += 1
    return epochs


def autocast_ctx(device: torch.device, amp: str):
    """One switch for mixed precision: bf16/fp16 autocast, or nothing."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def validate(model: nn.Module, objective, items, batch_size: int, d: Dist, amp: str) -> dict[str, float]:
    """Mean loss over `items`, and for a classifier the ROC-AUC of its scores, sharded over ranks (every rank
    runs the unwrapped model, never the DDP wrapper, so no rank waits on a collective inside forward) and
    all-reduced. The AUC is None when the items hold one class only."""
    from sklearn.metrics import roc_auc_score

    plain = unwrap(model)
    was_training = plain.training
    plain.eval()
    total, count = 0.0, 0.0
    classify = isinstance(objective, ClassifyObjective)
    scores = np.zeros(len(items) if classify else 0)
    labels = np.zeros(len(items) if classify else 0)
    mine = np.arange(d.rank, len(items), d.world_size)
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo : lo + batch_size]
        batch = objective.prepare(items.batch(idx), train=False)
        if batch["count"] == 0:
            continue
        batch = to_device(batch, d.device)
        with autocast_ctx(d.device, amp):
            if classify:
                logits, loss = objective.logits_and_loss_sum(plain, batch)
                scores[idx] = logits.float().cpu().numpy()
                labels[idx] = batch["positive"].cpu().numpy()
            else:
                loss = objective.loss_sum(plain, batch)
            total += float(loss)
        count += batch["count"]
    total, count = d.all_reduce_sum([total, count])
    out: dict[str, float] = {"val_loss": total / count if count else float("nan")}
    if classify:
        if d.enabled:  # every rank filled its own items; the sum assembles the whole split everywhere
            scores = np.asarray(d.all_reduce_sum(scores.tolist()))
            labels = np.asarray(d.all_reduce_sum(labels.tolist()))
        both = 0 < labels.sum() < len(labels)
        out["val_roc_auc"] = float(roc_auc_score(labels > 0.5, scores)) if both else None
    plain.train(was_training)
    return out


def exported_state(model: nn.Module, average: WeightAverage | None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights that would be exported now: the moving average when there is one."""
    with average.swapped_in() if average is not None else nullcontext():
        return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def selection_metric(params: Params) -> str:
    """What picks the exported checkpoint and drives early stopping: train.select_by, where 'auto' is the
    validation ROC-AUC for a classifier (what users judge it by; the loss also rewards confident calibration)
    and the validation loss for the language models."""
    choice = params.train.select_by
    if choice == "auto":
        return "val_roc_auc" if params.task == "classify" else "val_loss"
    return choice


def data_fingerprint(enc: Encoded, train_rows: np.ndarray) -> dict[str, Any]:
    """What a resumed run checks to be sure it trains on the same data."""
    return {
        "tokenizer_hash": str(enc.meta.get("tokenizer_hash")),
        "n_docs": enc.n_docs,
        "n_train": int(len(train_rows)),
        "train_rows_sum": int(np.asarray(train_rows, dtype=np.int64).sum()),
    }


@dataclass
class StepStats:
    loss_sum: float  # this rank's loss sum over the step's micro-batches
    count: float  # targets of the step over all ranks
    tokens: int  # real tokens this rank processed
    grad_norm: float  # of the whole accumulated (and all-reduced) gradient, before clipping


def optimizer_step(
    *,
    model: nn.Module,
    wrapped: nn.Module,
    ddp: nn.parallel.DistributedDataParallel | None,
    objective,
    micro: list[dict],
    d: Dist,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float | None,
    amp: str,
) -> StepStats:
    """Accumulate the micro-batches' gradients, clip the total, step the optimizer."""
    (global_count,) = d.all_reduce_sum([float(sum(b["count"] for b in micro))])
    loss_sum, tokens = 0.0, 0
    for m, batch in enumerate(micro):
        batch = to_device(batch, d.device)
        tokens += int(batch["attention_mask"].sum())
        last = m == len(micro) - 1
        with (ddp.no_sync() if ddp is not None and not last else nullcontext()):  # sync once, on the last
            with autocast_ctx(d.device, amp):
                part = objective.loss_sum(wrapped, batch)
            scaler.scale(part * d.world_size / max(global_count, 1.0)).backward()
        loss_sum += float(part.detach())
    scaler.unscale_(optimizer)  # no-op without fp16; clipping must see true gradients
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss_sum, global_count, tokens, float(norm))


@dataclass
class _Progress:
    """Everything besides the modules' state dicts that a checkpoint must carry to resume exactly."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_val: float = math.inf  # the selection metric's best value, lower is better (val_loss or -val_roc_auc)
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    tokens_seen: int = 0
    seconds: float = 0.0
    running: list[float] = field(default_factory=list)  # step losses since the last validation
    history: list[dict[str, Any]] = field(default_factory=list)
    log: StepLog = field(default_factory=StepLog)

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "best": {"value": None if math.isinf(self.best_val) else self.best_val, "step": self.best_step,
                     "bad_evals": self.bad_evals},
            "stopped_early": self.stopped_early, "tokens_seen": self.tokens_seen, "seconds": self.seconds,
            "running": list(self.running), "history": list(self.history), "log": self.log.state(),
        }

    @classmethod
    def from_state(cls, ck: dict[str, Any]) -> _Progress:
        best = ck["best"]
        return cls(
            step=ck["step"], epoch=ck["epoch"], step_in_epoch=ck["step_in_epoch"],
            best_val=math.inf if best["value"] is None else best["value"], best_step=best["step"],
            bad_evals=best["bad_evals"], stopped_early=ck["stopped_early"], tokens_seen=ck["tokens_seen"],
            seconds=ck["seconds"], running=list(ck["running"]), history=list(ck["history"]),
            log=StepLog.from_state(ck["log"]),
        )


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
    out_dir/checkpoint.pt (which must exist and match the params); "auto" continues when it exists (what a
    worker restarted by torchrun --max-restarts does) and starts afresh otherwise.
    """
    from rich.console import Console

    from lm.model import build_model

    cfg = params.train
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    ckpt_path = out_dir / CHECKPOINT
    with distributed(cfg.device, cfg.backend) as d:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.world_size))
        torch.manual_seed(params.seed)
        np.random.seed(params.seed & 0xFFFFFFFF)
        random.seed(params.seed)
        console = Console(stderr=True, quiet=not d.is_main)

        enc = Encoded.open(encoded_dir)
        enc.check_task(params.task)
        parts = load_split(split_dir)
        train_items = make_items(enc, parts["train"], params.task, enc.max_len)
        val_items = make_items(enc, parts["val"], params.task, enc.max_len)
        objective = make_objective(params, enc, parts["train"])
        stream = TrainStream(
            train_items, seed=params.seed, batch_size=cfg.batch_size, grad_accum_steps=cfg.grad_accum_steps,
            rank=d.rank, world_size=d.world_size, sampler=cfg.sampler,
            weights=class_weights(train_labels(params, enc, parts["train"])) if cfg.sampler == "weighted" else None,
        )
        plan = stream.schedule(epochs_for(stream, cfg.epochs, min_steps_for(params), cfg.max_steps), cfg.max_steps)
        total_steps = sum(plan)
        if total_steps == 0:
            raise LmError(
                f"train: {len(train_items)} training items are fewer than one step of train.batch_size x "
                f"train.grad_accum_steps x train.nproc = {stream.global_batch}; lower train.batch_size"
            )

        model = build_model(
            params.model, task=params.task, vocab_size=enc.vocab_size, max_len=enc.max_len,
            pad_id=enc.pad_id, seed=params.seed,
        ).to(d.device)
        model.train()
        resuming = resume is True or (resume == "auto" and ckpt_path.exists())
        init_note = ""
        if cfg.init_from and not resuming:  # a resumed run takes every weight from its checkpoint
            from lm.model.init_from import init_from

            report = init_from(model, cfg.init_from, task=params.task, vocab_size=enc.vocab_size,
                               tokenizer_hash=enc.meta.get("tokenizer_hash"))
            init_note = f" init_from={report.source} ({report.kind}, {report.loaded} tensors; new: {len(report.fresh)})"
        optimizer = build_optimizer(model, cfg)
        scheduler = build_scheduler(optimizer, cfg, total_steps)
        scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.amp == "fp16")
        fingerprint = data_fingerprint(enc, parts["train"])
        prog, best_state = _Progress(), None
        average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None

        resumed_from = None
        if resuming:
            ck = load_checkpoint(ckpt_path)
            check_resumable(ck, params.model_dump(), fingerprint, ckpt_path)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"])
            prog = _Progress.from_state(ck["progress"])
            if average is not None:
                average.load_state(ck["ema"])
            best_state = ck["best_model"] if d.is_main else None
            resumed_from = prog.step
            del ck
        elif d.is_main:
            ckpt_path.unlink(missing_ok=True)  # a restarted worker must never find a previous run's state
        if d.is_main:
            remove_stale_temporaries(out_dir)
        d.barrier()  # every rank has read the checkpoint before rank 0 may overwrite it

        ddp = None
        wrapped: nn.Module = model
        if d.enabled:
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
            wrapped = ddp
        if cfg.compile:
            wrapped = torch.compile(wrapped)

        logger = TrainLogger(d.is_main, reports_dir, total_steps, console, replay=prog.log if resumed_from is not None else None)
        logger.print(
            f"[bold]train[/] task={params.task} attention={params.model.attention} "
            f"params={sum(p.numel() for p in model.parameters()):,} items={len(train_items)} "
            f"steps={total_steps} processes={d.world_size} device={d.device} amp={cfg.amp}"
            + (f" resumed at step {resumed_from}" if resumed_from is not None else "") + init_note
        )
        checkpoint_every = cfg.checkpoint_every or cfg.eval_every
        metric = selection_metric(params)

        def save(finished: bool) -> None:
            if d.is_main:
                save_checkpoint(ckpt_path, {
                    "format": 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": prog.step,
                    "epoch": prog.epoch,
                    "data_position": {"epoch": prog.epoch, "step_in_epoch": prog.step_in_epoch,
                                      "seed": params.seed, "global_batch": stream.global_batch},
                    "rng": rng_state(),
                    "progress": prog.state(),
                    "best_model": best_state,
                    "ema": average.state() if average is not None else None,
                    "best_value": None if math.isinf(prog.best_val) else prog.best_val,
                    "finished": finished,
                    "params": params.model_dump(),
                    "data": fingerprint,
                })

        started = time.perf_counter()
        seconds_before = prog.seconds
        try:
            while prog.step < total_steps and not prog.stopped_early:
                if prog.step_in_epoch >= plan[prog.epoch]:
                    prog.epoch, prog.step_in_epoch = prog.epoch + 1, 0
                    continue
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(params.seed, prog.step, d.rank))  # dropout: a function of the step
                micro = [objective.prepare(b, train=True, epoch=prog.epoch)
                         for b in stream.micro_batches(prog.epoch, prog.step_in_epoch)]
                lr = optimizer.param_groups[0]["lr"]
                stats = optimizer_step(
                    model=model, wrapped=wrapped, ddp=ddp, objective=objective, micro=micro, d=d,
                    optimizer=optimizer, scaler=scaler, grad_clip=cfg.grad_clip, amp=cfg.amp,
                )
                scheduler.step()
                prog.step += 1
                if average is not None:
                    average.update(prog.step)
                prog.step_in_epoch += 1
                loss_all, tokens_all = d.all_reduce_sum([stats.loss_sum, float(stats.tokens)])
                prog.tokens_seen += int(tokens_all)
                train_loss = loss_all / max(stats.count, 1.0)
                prog.running.append(train_loss)
                row: dict[str, Any] = {
                    "step": prog.step, "train_loss": train_loss, "lr": lr, "grad_norm": stats.grad_norm,
                    "tokens_per_s": tokens_all / max(time.perf_counter() - t0, 1e-9),
                }

                if prog.step % cfg.eval_every == 0 or prog.step == total_steps:
                    with average.swapped_in() if average is not None else nullcontext():  # validate what is exported
                        val = (validate(wrapped, objective, val_items, params.eval.batch_size, d, cfg.amp)
                               if len(val_items) else {"val_loss": float("nan")})
                    val_loss = val["val_loss"]
                    avg = float(np.mean(prog.running))
                    prog.running.clear()
                    row.update(val, train_loss_avg=avg)
                    prog.history.append({"step": prog.step, "epoch": prog.epoch, "train_loss": avg, **val, "lr": lr})
                    auc = val.get("val_roc_auc")
                    logger.print(
                        f"step {prog.step:>5}/{total_steps} epoch {prog.epoch} train_loss {avg:.4f} "
                        f"val_loss {val_loss:.4f}" + (f" val_roc_auc {auc:.4f}" if auc is not None else "")
                        + f" lr {lr:.2e}"
                    )
                    # lower is better: the loss, or minus the AUC (a one-class validation split falls back to the loss)
                    value = -auc if metric == "val_roc_auc" and auc is not None else val_loss
                    if math.isnan(value) or value < prog.best_val:
                        if not math.isnan(value):
                            prog.best_val, prog.best_step = value, prog.step
                        prog.bad_evals = 0
                        if d.is_main:
                            best_state = exported_state(model, average)
                    else:
                        prog.bad_evals += 1
                        if cfg.patience and prog.bad_evals >= cfg.patience:
                            logger.print(f"early stop: no {metric} improvement in {cfg.patience} evaluations")
                            prog.stopped_early = True
                prog.log.append(row)
                logger.log(row)
                prog.seconds = seconds_before + time.perf_counter() - started
                if prog.step % checkpoint_every == 0 and prog.step < total_steps and not prog.stopped_early:
                    save(finished=False)

            prog.seconds = seconds_before + time.perf_counter() - started
            save(finished=True)
            best_row = next((h for h in prog.history if h["step"] == prog.best_step), None)
            result = TrainResult(
                steps=prog.step, epochs_run=prog.epoch + (1 if prog.step_in_epoch else 0),
                best_val_loss=None if best_row is None else best_row["val_loss"],
                best_val_roc_auc=None if best_row is None else best_row.get("val_roc_auc"), select_by=metric,
                final_train_loss=prog.history[-1]["train_loss"] if prog.history else None,
                seconds=prog.seconds, tokens_per_s=prog.tokens_seen / max(prog.seconds, 1e-9),
                history=list(prog.history), stopped_early=prog.stopped_early, best_step=prog.best_step,
                step_log=list(prog.log.rows), resumed_from=resumed_from,
            )
            if d.is_main:
                plain = unwrap(model)
                if best_state is not None:
                    plain.load_state_dict(best_state)
                export_model(plain, out_dir, export_config(params, enc), tokenizer_dir)
                summary = {
                    "select_by": metric, "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                    **({"best_val_roc_auc": result.best_val_roc_auc} if result.best_val_roc_auc is not None else {}),
                    "final_train_loss": result.final_train_loss, "steps": result.steps,
                    "stopped_early": result.stopped_early, "tokens_per_s": round(result.tokens_per_s, 1),
                    "seconds": round(result.seconds, 2),
                }
                logger.close(summary)
        finally:
            logger.close()
        d.barrier()
        return result if d.is_main else None
