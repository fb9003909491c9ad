"""Generation speed with and without the KV cache, for several attention kinds, in one run.

    python benchmarks/generate.py            # d_model 256, 4 layers, 4 heads, vocab 8192;
                                             # 16-token prompt + 256 new
    python benchmarks/generate.py --quick    # 2 kinds, 64 new tokens (a few seconds)

lm.infer.generate.generate decodes greedily (temperature 0) from a randomly initialised CausalLM. With the
cache each step feeds one token and the per-layer state (past k/v for exact kinds, the running sums S, z for
linear kinds); without it each step recomputes the whole context, so its cost per token grows with the
length. Cached and uncached runs are interleaved (`--repeats`, median) and their tokens compared
(`same_tokens`; near-ties of random logits may rarely flip an argmax). One torch thread by default (small
per-token ops; see benchmarks/attention.py).

Like with like: both sides are lm's own CausalLM with the same weights, the same prompt and the same number of
new tokens, decoded greedily by the same function; only `use_cache` differs. No Hugging Face model is timed
here (the train-step comparison with GPT-2, benchmarks/train_step.py, runs it with `use_cache=False`, as
training does). The last line is one JSON object, also written to benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record

KINDS = ["standard", "rotary", "linear", "performer", "cosformer", "yat-spherical", "slay-anchor"]
QUICK_KINDS = ["standard", "linear"]


def build(kind: str, max_len: int) -> torch.nn.Module:
    from lm.config import ModelConfig
    from lm.model import build_model

    cfg = ModelConfig(
        d_model=256,
        n_layers=4,
        n_heads=4,
        d_ff=1024,
        dropout=0.0,
        attention=kind,
        positions="none" if kind == "rotary" else "learned",
    )
    return build_model(cfg, task="clm", vocab_size=8192, max_len=max_len, pad_id=1, seed=0).eval()


def main() -> None:
    from lm.infer.generate import generate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"kinds {', '.join(QUICK_KINDS)}; 64 new tokens")
    ap.add_argument("--kinds", default=None)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=None, help="new tokens per run (default 256, quick 64)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=1)
    record.add_save_arg(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",") if args.kinds else (QUICK_KINDS if args.quick else KINDS)
    new = args.new or (64 if args.quick else 256)
    repeats = args.repeats or (1 if args.quick else 3)
    prompt = torch.randint(4, 8192, (args.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    print(
        f"greedy decoding, prompt {args.prompt_len} + {new} new tokens, {args.threads} thread(s), "
        f"median of {repeats} interleaved repeats"
    )
    print(f"{'kind':14} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9} {'same':>5}")
    rows = []
    for kind in kinds:
        model = build(kind, args.prompt_len + new)
        generate(model, prompt, max_new_tokens=4, temperature=0)  # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        tokens: dict[bool, list[int]] = {}
        for _ in range(repeats):
            for cached in (True, False):
                start = time.perf_counter()
                tokens[cached] = generate(model, prompt, max_new_tokens=new, temperature=0, use_cache=cached)
                times[cached].append(time.perf_counter() - start)
        row = {"kind": kind, "new_tokens": new}
        for cached, name in ((True, "cache"), (False, "no_cache")):
            row[f"{name}_tokens_per_s"] = round(new / statistics.median(times[cached]), 1)
        row["speedup"] = round(row["cache_tokens_per_s"] / row["no_cache_tokens_per_s"], 2)
        row["same_tokens"] = tokens[True] == tokens[False]
        rows.append(row)
        print(
            f"{kind:14} {row['cache_tokens_per_s']:>12.0f} {row['no_cache_tokens_per_s']:>15.0f} "
            f"{row['speedup']:>8.1f}x {row['same_tokens']!s:>5}",
            flush=True,
        )
    record.finish(
        {
            "benchmark": "generate",
            "threads": args.threads,
            "prompt_len": args.prompt_len,
            "new_tokens": new,
            "repeats": repeats,
            "results": rows,
        },
        quick=args.quick,
        save=not args.no_save,
    )


if __name__ == "__main__":
    main()
