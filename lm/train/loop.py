"""The training loop shared by all tasks: single process or DDP, accumulation, AMP, clipping, schedule,
periodic validation with early stopping, best-model export and a full checkpoint.

Loss normalisation: every micro-batch returns a loss SUM and its target count; the count of the whole
accumulated step is all-reduced first, and each micro-batch backpropagates sum * world / global_count. DDP
averages gradients over ranks (dividing by world), so the update equals one big batch's mean loss exactly,
whatever the split into processes and micro-batches.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from lm.config import Params
from lm.data.batches import RowItems, WindowItems
from lm.data.encoded import Encoded
from lm.errors import LmError
from lm.train.checkpoint import CHECKPOINT, export_model, rng_state, save_checkpoint, unwrap
from lm.train.distributed import Dist, distributed
from lm.train.objectives import CausalLMObjective, ClassifyObjective, MaskedLMObjective, Special, to_device
from lm.train.optim import build_optimizer, build_scheduler


@dataclass
class TrainResult:
    steps: int
    epochs_run: int
    best_val_loss: float | None
    final_train_loss: float | None
    seconds: float
    tokens_per_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False


def load_split(split_dir: Path) -> dict[str, np.ndarray]:
    parts = {}
    for name in ("train", "val", "test"):
        path = split_dir / f"{name}.npy"
        if not path.exists():
            raise LmError(f"{path} not found: run `lm split` first (or `dvc repro`)")
        parts[name] = np.load(path)
    return parts


def make_items(enc: Encoded, rows: np.ndarray, task: str, max_len: int) -> RowItems | WindowItems:
    if task == "clm":
        return WindowItems.from_docs(enc, rows, max_len)
    return RowItems(enc, rows)


def make_objective(params: Params, enc: Encoded, train_rows: np.ndarray):
    special_ids = enc.meta["special_ids"]
    if params.task == "classify":
        pos_weight = params.train.pos_weight if isinstance(params.train.pos_weight, float) else None
        if params.train.pos_weight == "auto":
            labels = enc.targets[train_rows] >= params.data.threshold
            n_pos = int(labels.sum())
            if n_pos == 0:
                raise LmError("the train split has no positive rows: check data.target_column and data.threshold")
            pos_weight = float((len(labels) - n_pos) / n_pos)
        return ClassifyObjective(params.data.threshold, pos_weight)
    if params.task == "mlm":
        special = Special(
            pad_id=special_ids["<|pad|>"],
            mask_id=special_ids["<|mask|>"],
            special_ids=sorted(special_ids.values()),
            n_ordinary=min(special_ids.values()),
        )
        return MaskedLMObjective(special, params.train.mask_prob, eval_seed=params.seed)
    return CausalLMObjective()


def autocast_ctx(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(model: nn.Module, objective, items, batch_size: int, d: Dist, amp: str) -> float:
    """Mean loss over `items`, sharded over ranks (every rank runs the unwrapped model) and all-reduced."""
    plain = unwrap(model)
    was_training = plain.training
    plain.eval()
    total, count = 0.0, 0.0
    mine = np.arange(d.rank, len(items), d.world_size)
    gen = torch.Generator().manual_seed(0)
    for lo in range(0, len(mine), batch_size):
        batch = objective.prepare(items.batch(mine[lo : lo + batch_size]), gen, train=False)
        if batch["count"] == 0:
            continue
        batch = to_device(batch, d.device)
        with autocast_ctx(d.device, amp):
            total += float(objective.loss_sum(plain, batch))
        count += batch["count"]
    total, count = d.all_reduce_sum([total, count])
    plain.train(was_training)
    return total / count if count else float("nan")


def export_config(params: Params, enc: Encoded) -> dict[str, Any]:
    return {
        "task": params.task,
        "model": params.model.model_dump(),
        "vocab_size": enc.vocab_size,
        "max_len": enc.max_len,
        "pad_id": enc.pad_id,
        "special_ids": enc.meta["special_ids"],
        "tokenizer_hash": enc.meta["tokenizer_hash"],
        "seed": params.seed,
        "threshold": params.data.threshold,
        "params": params.model_dump(),
    }


class _Logger:
    """dvclive on rank 0 (metrics + curves under reports/train), printing one line per validation."""

    def __init__(self, enabled: bool, out_dir: Path):
        self.live = None
        if enabled:
            from dvclive import Live

            self.live = Live(dir=str(out_dir), dvcyaml=False, save_dvc_exp=False, report=None)

    def log(self, row: dict[str, Any]) -> None:
        if self.live is None:
            return
        for key, value in row.items():
            if key != "step" and value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.live.log_metric(key, value)
        self.live.step = row["step"]
        self.live.next_step()

    def summary(self, values: dict[str, Any]) -> None:
        if self.live is not None:
            for key, value in values.items():
                if value is not None:
                    self.live.summary[key] = value
            self.live.make_summary()
            self.live.end()


def train(
    params: Params,
    *,
    encoded_dir: Path,
    split_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    reports_dir: Path,
) -> TrainResult | None:
    """Train per params; rank 0 writes out_dir (export + checkpoint) and reports_dir. Returns on rank 0."""
    from rich.console import Console

    from lm.model import build_model

    cfg = params.train
    with distributed(cfg.device, cfg.backend) as d:
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // d.world_size))
        torch.manual_seed(params.seed)  # identical initial weights on every rank
        np.random.seed(params.seed)
        console = Console(stderr=True, quiet=not d.is_main)

        enc = Encoded.open(encoded_dir)
        enc.check_task(params.task)
        parts = load_split(split_dir)
        train_items = make_items(enc, parts["train"], params.task, enc.max_len)
        val_items = make_items(enc, parts["val"], params.task, enc.max_len)
        objective = make_objective(params, enc, parts["train"])

        model = build_model(
            params.model, task=params.task, vocab_size=enc.vocab_size, max_len=enc.max_len,
            pad_id=enc.pad_id, seed=params.seed,
        ).to(d.device)
        model.train()
        optimizer = build_optimizer(model, cfg)
        wrapped: nn.Module = model
        if d.enabled:
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if cfg.compile:
            wrapped = torch.compile(wrapped)

        sampler = DistributedSampler(
            range(len(train_items)), num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=params.seed, drop_last=False
        )
        per_step = cfg.batch_size * cfg.grad_accum_steps
        # from the global item count, so the padding DistributedSampler adds is never reached and a step
        # sees the same examples whatever the number of processes
        steps_per_epoch = len(train_items) // (per_step * d.world_size)
        if steps_per_epoch == 0:
            raise LmError(
                f"train: {len(train_items)} training items are fewer than one step of "
                f"train.batch_size x train.grad_accum_steps x train.nproc = {per_step * d.world_size}; lower train.batch_size"
            )
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total_steps = min(total_steps, cfg.max_steps)
        scheduler = build_scheduler(optimizer, cfg, total_steps)
        scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.amp == "fp16")
        gen = torch.Generator().manual_seed(params.seed * 1_000_003 + d.rank)  # mlm dynamic masks

        logger = _Logger(d.is_main, reports_dir)
        console.print(
            f"[bold]train[/] task={params.task} attention={params.model.attention} "
            f"params={sum(p.numel() for p in model.parameters()):,} items={len(train_items)} "
            f"steps={total_steps} processes={d.world_size} device={d.device}"
        )
        history: list[dict[str, Any]] = []
        best_val, best_state, bad_evals = math.inf, None, 0
        step, epoch, stopped_early = 0, 0, False
        tokens_seen, started = 0, time.perf_counter()
        last_train_loss: float | None = None
        running: list[float] = []

        while step < total_steps and not stopped_early:
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
            for s in range(steps_per_epoch):
                if step >= total_steps:
                    break
                micro = [
                    objective.prepare(train_items.batch(order[s * per_step + m * cfg.batch_size: s * per_step + (m + 1) * cfg.batch_size]), gen, train=True)
                    for m in range(cfg.grad_accum_steps)
                ]
                (global_count,) = d.all_reduce_sum([float(sum(b["count"] for b in micro))])
                step_loss = 0.0
                for m, batch in enumerate(micro):
                    batch = to_device(batch, d.device)
                    tokens_seen += int(batch["attention_mask"].sum())
                    sync = d.enabled and m < len(micro) - 1
                    with (wrapped.no_sync() if sync and hasattr(wrapped, "no_sync") else nullcontext()):
                        with autocast_ctx(d.device, cfg.amp):
                            loss_sum = objective.loss_sum(wrapped, batch)
                        loss = loss_sum * d.world_size / max(global_count, 1.0)
                        scaler.scale(loss).backward()
                    step_loss += float(loss_sum.detach())
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                (total_loss,) = d.all_reduce_sum([step_loss])
                running.append(total_loss / max(global_count, 1.0))

                if step % cfg.eval_every == 0 or step == total_steps:
                    val_loss = evaluate_loss(wrapped, objective, val_items, params.eval.batch_size, d, cfg.amp) if len(val_items) else float("nan")
                    last_train_loss = float(np.mean(running))
                    running.clear()
                    row = {"step": step, "epoch": epoch, "train_loss": last_train_loss, "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]}
                    history.append(row)
                    logger.log(row)
                    console.print(
                        f"step {step:>5}/{total_steps} epoch {epoch} train_loss {last_train_loss:.4f} "
                        f"val_loss {val_loss:.4f} lr {row['lr']:.2e}"
                    )
                    if math.isnan(val_loss) or val_loss < best_val:
                        best_val = val_loss if not math.isnan(val_loss) else best_val
                        bad_evals = 0
                        if d.is_main:
                            best_state = {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}
                    else:
                        bad_evals += 1
                        if cfg.patience and bad_evals >= cfg.patience:
                            console.print(f"early stop: no validation improvement in {cfg.patience} evaluations")
                            stopped_early = True
                            break
            epoch += 1

        seconds = time.perf_counter() - started
        (tokens_all,) = d.all_reduce_sum([float(tokens_seen)])
        result = TrainResult(
            steps=step, epochs_run=epoch, best_val_loss=None if math.isinf(best_val) else best_val,
            final_train_loss=last_train_loss, seconds=seconds, tokens_per_s=tokens_all / max(seconds, 1e-9),
            history=history, stopped_early=stopped_early,
        )
        if d.is_main:
            plain = unwrap(model)
            save_checkpoint(out_dir / CHECKPOINT, {
                "model": plain.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "epoch": epoch,
                "data_position": {"epoch": epoch, "sampler_seed": params.seed},
                "rng": rng_state(),
                "params": params.model_dump(),
                "best_val_loss": result.best_val_loss,
            })
            if best_state is not None:
                plain.load_state_dict(best_state)
            export_model(plain, out_dir, export_config(params, enc), tokenizer_dir)
            logger.summary({
                "best_val_loss": result.best_val_loss, "final_train_loss": last_train_loss, "steps": step,
                "tokens_per_s": round(result.tokens_per_s, 1), "seconds": round(seconds, 2),
            })
        d.barrier()
        return result if d.is_main else None
