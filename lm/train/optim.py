"""AdamW with decoupled weight decay on weight matrices only, and linear warmup + cosine decay to min_lr.

Norm gains, biases and embeddings are not decayed: shrinking them towards zero has no regularising meaning
and hurts small models (the GPT-2/nanoGPT convention). A tied LM head shares the token embedding's
Parameter, so it follows the embedding (no decay).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lm.config import TrainConfig


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d)) or type(module).__name__.endswith(
        "Norm"
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decayed, not decayed] parameter groups; each trainable Parameter appears once."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        direct = list(module.parameters(recurse=False))
        if isinstance(module, nn.Embedding) or _is_norm(module):
            no_decay_ids.update(id(p) for p in direct)
        for name, p in module.named_parameters(recurse=False):
            if p.ndim < 2 or name.endswith("bias"):
                no_decay_ids.add(id(p))
    decay, no_decay = [], []
    seen: set[int] = set()
    for p in model.parameters():  # de-duplicated: a tied weight is listed once
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based): (step+1)/warmup during warmup, then a
    cosine from 1 at step `warmup` down to min_ratio at the last step (total - 1)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = total - 1 - warmup
    progress = 0.0 if span <= 0 else min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    wanted = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * total_steps)
    warmup = min(wanted, max(0, total_steps - 1))
    min_ratio = cfg.min_lr / cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup=warmup, total=total_steps, min_ratio=min_ratio)
    )
