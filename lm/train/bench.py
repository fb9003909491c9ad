"""`lm bench`: training throughput of the configured model on random tokens (no data needed)."""

from __future__ import annotations

import json
import time

import torch

from lm.config import Params
from lm.data.masking import IGNORE_INDEX


def run_bench(params: Params, steps: int = 10, vocab_size: int | None = None) -> str:
    """Time `steps` optimizer steps (after 2 warm-up steps); return one JSON line of figures."""
    from lm.model import build_model
    from lm.train.optim import build_optimizer

    vocab = vocab_size or params.tokenizer.vocab_size
    L, B = params.encode.max_len, params.train.batch_size
    torch.manual_seed(params.seed)
    model = build_model(
        params.model, task=params.task, vocab_size=vocab, max_len=L, pad_id=1, seed=params.seed
    )
    opt = build_optimizer(model, params.train)
    g = torch.Generator().manual_seed(params.seed)
    ids = torch.randint(4, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    if params.task == "classify":
        y = (torch.rand(B, generator=g) < 0.5).float()
    elif params.task == "mlm":  # predict a mask_prob share of the positions, as training does
        labels = torch.where(torch.rand(B, L, generator=g) < params.train.mask_prob, ids, IGNORE_INDEX)
    else:
        labels = torch.cat([ids[:, 1:], torch.randint(4, vocab, (B, 1), generator=g)], dim=1)

    from lm.data.objectives import CausalLMObjective, ClassifyObjective, with_label_rows

    # the training objectives' own losses (mlm and clm share one: cross-entropy over the labelled positions)
    objective = (
        ClassifyObjective(threshold=0.5, pos_weight=None)
        if params.task == "classify"
        else CausalLMObjective()
    )
    batch = {"input_ids": ids, "attention_mask": mask, "labels": y if params.task == "classify" else labels}
    count = B if params.task == "classify" else max(1, with_label_rows(batch)["count"])

    def step() -> None:
        loss = objective.loss_sum(model, batch) / count
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    return json.dumps(
        {
            "task": params.task,
            "attention": params.model.attention,
            "params": sum(p.numel() for p in model.parameters()),
            "batch": B,
            "seq_len": L,
            "steps": steps,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(steps * B * L / seconds, 1),
            "threads": torch.get_num_threads(),
        }
    )
