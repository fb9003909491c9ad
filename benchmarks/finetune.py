"""Fine-tuning step time: lm started from a Hugging Face checkpoint (train.init_from) vs the transformers
model loaded from the same directory, measured side by side.

    python benchmarks/finetune.py            # 2 threads; 2 warm-up and 3 x 4 timed steps per model
    python benchmarks/finetune.py --quick    # 1 warm-up and 2 timed steps per model (a minute on 2 cores)

Pairs (eager PyTorch, float32, CPU), each built from one random checkpoint written by `save_pretrained`:
* classify: a BERT encoder of the MiniLM-L6 shape (hidden 384, 6 layers, 12 heads, intermediate 1536, vocab
            30,522), batch 32 x 64, rows right-padded to random lengths in [L/2, L]. lm: SequenceClassifier +
            init_from (trunk and pretrained pooler); Hugging Face: BertForSequenceClassification(num_labels=1,
            problem_type="multi_label_classification"), whose new classifier gets lm's initial weights.
* clm:      a GPT-2 decoder (384 wide, 6 layers, 6 heads, GPT-2's 50,257-token vocabulary, exact GELU),
            batch 8 x 128. lm: CausalLM + init_from; Hugging Face: GPT2LMHeadModel, `use_cache=False`.
A step is what each library's fine-tuning runs: lm's own `optimizer_step` (lm/train/step.py: the objective's
loss sum over the step's count, backward, clipping at 1.0, AdamW from lm/train/optim.py); on the Hugging Face
side the model's `labels=` loss, backward, clip_grad_norm_(1.0), torch AdamW with the same parameter groups
and betas, zero_grad. Hugging Face attention is `sdpa`; dropout is --dropout (0.1, BERT's and GPT-2's default)
on both sides. Before timing, both models' loss on the batch in eval mode must agree (`same_initial_loss`,
1e-4): the same checkpoint gives the same function. Steps are interleaved (the first model alternates) and
the median per model is reported; `lm_over_hf_speed` above 1 means lm's step is faster. The 1-minute load
average is recorded before the run (other processes' work) and after it: a `before` of 1 or more on 2 cores
means the cores were shared, and the step times are inflated and noisy. The last line is one JSON object, also
written to benchmarks/results/finetune.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record

MINILM = {"vocab": 30522, "d": 384, "layers": 6, "heads": 12, "ff": 1536}
GPT2_SMALLER = {"vocab": 50257, "d": 384, "layers": 6, "heads": 6, "ff": 1536}
SHAPES = {"classify": (MINILM, 32, 64), "clm": (GPT2_SMALLER, 8, 128)}  # model, batch, seq
CLIP, LR = 1.0, 5e-5


def hf_checkpoint(task: str, shape: dict, max_len: int, dropout: float, path: Path) -> None:
    """A random Hugging Face model of `shape`, written by save_pretrained."""
    import transformers

    torch.manual_seed(0)
    if task == "classify":
        cfg = transformers.BertConfig(
            vocab_size=shape["vocab"],
            hidden_size=shape["d"],
            num_hidden_layers=shape["layers"],
            num_attention_heads=shape["heads"],
            intermediate_size=shape["ff"],
            max_position_embeddings=max_len,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=0,
        )
        transformers.BertModel(cfg).save_pretrained(path)
    else:
        cfg = transformers.GPT2Config(
            vocab_size=shape["vocab"],
            n_embd=shape["d"],
            n_layer=shape["layers"],
            n_head=shape["heads"],
            n_inner=shape["ff"],
            n_positions=max_len,
            activation_function="gelu",
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=0,
            eos_token_id=0,
            use_cache=False,
        )
        transformers.GPT2LMHeadModel(cfg).save_pretrained(path)


def lm_from(task: str, path: Path, vocab: int, max_len: int) -> torch.nn.Module:
    """lm's model for `task`, its config read from the checkpoint, its weights loaded by train.init_from."""
    from lm.model import build_model
    from lm.model.hf import spec_from_hf_config
    from lm.model.init_from import init_from

    spec = spec_from_hf_config(json.loads((path / "config.json").read_text()))
    model = build_model(spec.model, task=task, vocab_size=vocab, max_len=max_len, pad_id=0, seed=0)
    init_from(model, path, task=task, vocab_size=vocab, tokenizer_hash=None)
    return model


def hf_from(task: str, path: Path, lm: torch.nn.Module) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    if task == "clm":
        return transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation="sdpa")
    hf = transformers.BertForSequenceClassification.from_pretrained(
        path, num_labels=1, problem_type="multi_label_classification", attn_implementation="sdpa"
    )
    with torch.no_grad():  # both classifiers are new: the same start
        hf.classifier.weight.copy_(lm.classifier.weight)
        hf.classifier.bias.copy_(lm.classifier.bias)
    return hf


def make_batch(task: str, vocab: int, batch: int, seq: int) -> dict:
    """lm's prepared batch (objective.prepare) plus `hf_labels`, the same targets in Hugging Face's
    convention."""
    from lm.data.masking import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    if task == "clm":  # full windows; HF shifts its labels inside, so lm's last position has no target either
        mask = torch.ones_like(ids, dtype=torch.bool)
        labels = torch.cat([ids[:, 1:], torch.full((batch, 1), IGNORE_INDEX)], dim=1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "hf_labels": ids,
            "count": int((labels != IGNORE_INDEX).sum()),
        }
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = torch.arange(seq)[None, :] < lengths[:, None]  # right padding
    targets = torch.rand(batch, generator=g)
    b = {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask, "targets": targets}
    b = objective(task).prepare(b, train=True)
    return {**b, "hf_labels": b["labels"][:, None]}


def objective(task: str):
    from lm.data.objectives import CausalLMObjective, ClassifyObjective

    return ClassifyObjective(0.5, None, soft_labels=True) if task == "classify" else CausalLMObjective()


def hf_loss(model: torch.nn.Module, b: dict) -> torch.Tensor:
    """The model's own `labels=` loss (GPT-2's config has use_cache off: training keeps no keys/values)."""
    return model(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(), labels=b["hf_labels"]
    ).loss


def lm_step(model: torch.nn.Module, task: str, b: dict) -> Callable[[], float]:
    """One step of lm's training code: optimizer_step over one micro-batch (loss sum / count, clip, AdamW)."""
    from lm.config import TrainConfig
    from lm.train.distributed import Dist
    from lm.train.optim import build_optimizer
    from lm.train.step import optimizer_step

    world = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    opt = build_optimizer(model, TrainConfig(lr=LR, min_lr=0.0, weight_decay=0.01))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    obj = objective(task)
    model.train()

    def step() -> float:
        row = optimizer_step(
            model=model,
            wrapped=model,
            ddp=None,
            objective=obj,
            micro=[b],
            world=world,
            optimizer=opt,
            scaler=scaler,
            grad_clip=CLIP,
            amp="none",
        )
        return float(row["train_loss"])  # a host number, as the Hugging Face step returns

    return step


def hf_step(model: torch.nn.Module, b: dict) -> Callable[[], float]:
    """A plain transformers fine-tuning step, with lm's parameter groups and AdamW settings."""
    from lm.train.optim import param_groups

    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=LR, betas=(0.9, 0.98), eps=1e-8)
    model.train()

    def step() -> float:
        loss = hf_loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def initial_losses(lm: torch.nn.Module, hf: torch.nn.Module, task: str, b: dict) -> tuple[float, float]:
    """Both models' loss on the batch in eval mode (no dropout), before any step."""
    lm.eval(), hf.eval()
    with torch.no_grad():
        ours = float(objective(task).loss_sum(lm, b)) / b["count"]
        ref = float(hf_loss(hf, b))
    return ours, ref


def bench(task: str, *, dropout: float, repeats: int, steps: int, warmup: int) -> dict:
    shape, batch, seq = SHAPES[task]
    with tempfile.TemporaryDirectory() as tmp:
        hf_checkpoint(task, shape, seq, dropout, Path(tmp))
        lm = lm_from(task, Path(tmp), shape["vocab"], seq)
        hf = hf_from(task, Path(tmp), lm)
    b = make_batch(task, shape["vocab"], batch, seq)
    lm_loss0, hf_loss0 = initial_losses(lm, hf, task, b)
    runners = {"lm": lm_step(lm, task, b), "hf": hf_step(hf, b)}
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(repeats * steps):  # step by step, the first model alternating
        for name in order[r % 2 :] + order[: r % 2]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    lm_ms, hf_ms = (statistics.median(times[n]) * 1e3 for n in ("lm", "hf"))
    return {
        "task": task,
        "model": dict(shape),
        "batch": batch,
        "seq": seq,
        "params": {
            "lm": sum(p.numel() for p in lm.parameters()),
            "hf": sum(p.numel() for p in hf.parameters()),
        },
        "initial_loss": {"lm": round(lm_loss0, 6), "hf": round(hf_loss0, 6)},
        "same_initial_loss": abs(lm_loss0 - hf_loss0) < 1e-4,
        "lm_ms_per_step": round(lm_ms, 1),
        "hf_ms_per_step": round(hf_ms, 1),
        "lm_over_hf_speed": round(hf_ms / lm_ms, 3),
        "ms_per_step_each": {n: [round(t * 1e3, 1) for t in ts] for n, ts in times.items()},  # the spread
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps per model")
    ap.add_argument("--tasks", default="classify,clm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat (default 4, quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3, quick 1)")
    record.add_save_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = 1 if args.quick else 2
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dropout {args.dropout}; "
        f"{warmup} warm-up + {steps * repeats} timed steps per model, interleaved; median ms per step"
    )
    print(f"{'task':9} {'lm ms':>8} {'hf ms':>8} {'lm/hf speed':>12}")
    rows, load_before = [], os.getloadavg()[0]  # a shared machine's other work shows in the step times
    for task in args.tasks.split(","):
        row = bench(task, dropout=args.dropout, repeats=repeats, steps=steps, warmup=warmup)
        rows.append(row)
        print(
            f"{task:9} {row['lm_ms_per_step']:>8.1f} {row['hf_ms_per_step']:>8.1f} "
            f"{row['lm_over_hf_speed']:>12.2f}"
            f"   same initial loss: {row['same_initial_loss']}",
            flush=True,
        )
    figures = {
        "benchmark": "finetune",
        "threads": torch.get_num_threads(),
        "dropout": args.dropout,
        "hf_attn": "sdpa",
        "steps": steps,
        "repeats": repeats,
        "warmup": warmup,
        "load_avg_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "results": rows,
    }
    record.finish(figures, quick=args.quick, save=not args.no_save)


if __name__ == "__main__":
    main()
