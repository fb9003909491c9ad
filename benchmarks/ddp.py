"""DDP scaling on CPU: training tokens/s of 1 process and of 2 processes (gloo), and the scaling efficiency.

    python benchmarks/ddp.py            # d 256, 4 layers, batch 16 x 128 per process, 20 timed steps
    python benchmarks/ddp.py --quick    # d 64, 2 layers, batch 16 x 64, 8 timed steps (well under a minute)

Each configuration runs under torchrun with one torch thread per process, timing lm's own optimizer step
(lm.train.step.optimizer_step: causal-LM loss over random tokens, gradient accumulation with DDP no_sync,
all-reduced target counts, clipping, AdamW). Weak scaling: every process keeps the per-process batch, so 2
processes do twice the work per step; efficiency = tokens/s(2 processes) / (2 x tokens/s(1 process)).
For reference, 1 process with 2 threads (the same two cores used by intra-op parallelism instead) is
timed too. The machines here are noisy: compare figures from one run, not across runs.
The last line is one JSON object with the figures, also written to benchmarks/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One rank: build the model, time `steps` optimizer steps after `warmup`; rank 0 prints a JSON line."""
    sys.path.insert(0, str(REPO))
    import torch
    from torch import nn

    from lm.config import ModelConfig, TrainConfig
    from lm.data.objectives import CausalLMObjective
    from lm.model import build_model
    from lm.train.distributed import distributed
    from lm.train.optim import build_optimizer
    from lm.train.step import optimizer_step

    torch.set_num_threads(args.threads)
    cfg = ModelConfig(
        d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, d_ff=4 * args.d_model, dropout=0.0
    )
    with distributed("cpu", "gloo") as d:
        model = build_model(cfg, task="clm", vocab_size=args.vocab, max_len=args.seq, pad_id=1, seed=0)
        opt = build_optimizer(model, TrainConfig(lr=1e-4, warmup_steps=0))
        ddp = nn.parallel.DistributedDataParallel(model) if d.enabled else None
        wrapped = ddp or model
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        objective = CausalLMObjective()
        gen = torch.Generator().manual_seed(d.rank)

        def micro() -> list[dict]:
            out = []
            for _ in range(args.accum):
                ids = torch.randint(4, args.vocab, (args.batch, args.seq + 1), generator=gen)
                out.append(
                    objective.prepare(
                        {
                            "input_ids": ids[:, :-1],
                            "labels": ids[:, 1:],
                            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.bool),
                        },
                        train=True,
                    )
                )
            return out

        def step() -> None:
            optimizer_step(
                model=model,
                wrapped=wrapped,
                ddp=ddp,
                objective=objective,
                micro=micro(),
                world=d,
                optimizer=opt,
                scaler=scaler,
                grad_clip=1.0,
                amp="none",
            )

        for _ in range(args.warmup):
            step()
        d.barrier()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        d.barrier()
        seconds = time.perf_counter() - started
        tokens = args.steps * args.accum * args.batch * args.seq * d.world_size
        if d.is_main:
            print(
                json.dumps(
                    {
                        "processes": d.world_size,
                        "threads": args.threads,
                        "seconds": round(seconds, 3),
                        "tokens_per_s": round(tokens / seconds, 1),
                    }
                ),
                flush=True,
            )


def launch(nproc: int, threads: int, args: argparse.Namespace) -> dict:
    passthrough = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("quick", "worker", "threads", "no_save") and v is not None
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(Path(__file__).resolve()),
        "--worker",
        f"--threads={threads}",
        *passthrough,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"benchmark worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, few steps")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16, help="per process and micro-step")
    parser.add_argument("--accum", type=int, default=2, help="micro-steps per optimizer step")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--no-save",
        action="store_true",
        help="print the JSON line only; do not write benchmarks/results/ddp.json",
    )
    args = parser.parse_args()
    defaults = (
        dict(d_model=64, layers=2, vocab=2048, seq=64, steps=8)
        if args.quick
        else dict(d_model=256, layers=4, vocab=8192, seq=128, steps=20)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        worker(args)
        return

    runs = {"1x1": launch(1, 1, args), "2x1": launch(2, 1, args), "1x2": launch(1, 2, args)}
    one, two, threads2 = runs["1x1"]["tokens_per_s"], runs["2x1"]["tokens_per_s"], runs["1x2"]["tokens_per_s"]
    print(
        f"model d={args.d_model} layers={args.layers} vocab={args.vocab}; per process: batch {args.batch} x "
        f"seq {args.seq} x accum {args.accum}, {args.steps} timed steps"
    )
    print(f"{'configuration':<28}{'tokens/s':>12}")
    print(f"{'1 process x 1 thread':<28}{one:>12,.0f}")
    print(f"{'2 processes x 1 thread (DDP)':<28}{two:>12,.0f}")
    print(f"{'1 process x 2 threads':<28}{threads2:>12,.0f}")
    print(
        f"speedup {two / one:.2f}x, scaling efficiency {two / (2 * one):.0%} "
        f"(DDP vs 2 threads: {two / threads2:.2f}x)"
    )
    import record  # benchmarks/ (this script's folder) is on sys.path

    record.finish(
        {
            "benchmark": "ddp",
            "d_model": args.d_model,
            "layers": args.layers,
            "batch": args.batch,
            "seq": args.seq,
            "accum": args.accum,
            "steps": args.steps,
            "tokens_per_s_1proc": one,
            "tokens_per_s_2proc": two,
            "tokens_per_s_1proc_2threads": threads2,
            "speedup": round(two / one, 3),
            "scaling_efficiency": round(two / (2 * one), 3),
            "ddp_vs_threads": round(two / threads2, 3),
        },
        quick=args.quick,
        save=not args.no_save,
    )


if __name__ == "__main__":
    main()
