"""Training-step throughput: lm's model vs the Hugging Face model of the same size, measured side by side.

    python benchmarks/train_step.py            # d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 8192, 32 x 128
    python benchmarks/train_step.py --quick    # batch 8, fewer repeats (well under a minute)

Pairs (eager PyTorch, fp32, no torch.compile), same shapes and the same loss on the same batch; what differs
in the work done is listed, since it is where lm's speed comes from:

* clm:      lm CausalLM (pre-norm, learned positions, LayerNorm, GELU, biases, tied head)
            vs transformers GPT2LMHeadModel with `use_cache=False` (its default, True, also builds and
            returns the keys/values of every layer, which training never reads); loss = mean next-token
            cross-entropy, each side computed the way its library trains: lm passes `labels` (the LM head and
            cross-entropy chunked together, lm/model/lm_loss.py: the same loss, never the full (B, L, V)
            logits), Hugging Face gets full logits -> float -> F.cross_entropy (what its `labels=` path does).
* classify: lm SequenceClassifier (post-norm like BERT, CLS pooling, tanh pooler) vs
            BertForSequenceClassification(num_labels=1); loss = BCE-with-logits; rows are right-padded to
            random lengths in [L/2, L] and both models get the same attention mask. lm is timed twice:
            - `lm`: as it trains by default: the classifier reads the CLS row only, so its last block computes
              that row alone (keys and values still from every row; lm/model/tasks.py passes `final_rows` to
              the trunk). BERT computes every row of its last block;
            - `lm_full`: the same model with the last block computing every row, as BERT does (the benchmark
              drops the `final_rows` argument on the way into the trunk; lm's code and defaults unchanged).
            The JSON gives both ratios, the rows each last block computed (counted by a forward hook), and
            whether the two lm forms give the same logits (eval mode, same weights).

Both sides use the exact (erf) GELU (HF GPT-2 is built with activation_function="gelu") and Hugging Face's
default attention implementation (`sdpa`; `--hf-attn eager` for its explicit path). Other differences that
remain: lm's dropout draws its mask with a cheaper generator on CPU (lm/model/dropout.py); BERT adds
token-type embeddings. A step is forward + loss + backward + AdamW step + zero_grad on the same random batch.
Dropout is 0.1 everywhere on both sides (embeddings, residuals, attention weights: HF's defaults).
Measurements are interleaved step by step (the order of the models rotates each round) for `--steps` x
`--repeats` steps each and the median step time is reported, so all sides see the same machine noise. The
last line is one JSON object, also written to benchmarks/results/train_step.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record  # noqa: E402

D, LAYERS, HEADS, FF, VOCAB = 256, 4, 4, 1024, 8192


def lm_model(task: str, max_len: int, attention: str) -> torch.nn.Module:
    from lm.config import ModelConfig
    from lm.model import build_model

    cfg = ModelConfig(d_model=D, n_layers=LAYERS, n_heads=HEADS, d_ff=FF, dropout=0.1, attention_dropout=0.1,
                      attention=attention,
                      positions="learned", norm="layernorm", norm_position="pre" if task == "clm" else "post",
                      mlp="gelu", bias=True, tie_embeddings=True, pooling="cls")
    return build_model(cfg, task=task, vocab_size=VOCAB, max_len=max_len, pad_id=1, seed=0)


def hf_model(task: str, max_len: int, attn: str) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    if task == "clm":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=D, n_layer=LAYERS, n_head=HEADS, n_inner=FF,
                                      n_positions=max_len, activation_function="gelu", bos_token_id=0,
                                      eos_token_id=0, use_cache=False)  # training: no keys/values kept
        return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation=attn)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=FF, max_position_embeddings=max_len, num_labels=1, pad_token_id=1)
    return transformers.BertForSequenceClassification._from_config(cfg, attn_implementation=attn)


def every_row_in_last_block(model: torch.nn.Module) -> torch.nn.Module:
    """lm's classifier with its last block computing every row, as BERT's does: the trunk's `final_rows`
    argument (the CLS row, passed by SequenceClassifier.forward) is dropped; nothing else changes."""
    trunk_forward = model.trunk.forward

    def forward(*args, final_rows=None, **kwargs):  # type: ignore[no-untyped-def]
        return trunk_forward(*args, **kwargs)

    model.trunk.forward = forward  # an instance attribute: nn.Module.__call__ looks it up first
    return model


def last_block_rows(model: torch.nn.Module, is_hf: bool, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """How many rows (positions) the last block of a classifier outputs, counted by a forward hook."""
    block = model.bert.encoder.layer[-1] if is_hf else model.trunk.blocks[-1]
    seen: list[int] = []

    def hook(_module, _inputs, out):  # type: ignore[no-untyped-def]
        seen.append((out[0] if isinstance(out, tuple) else out).shape[1])  # (B, rows, E)

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask) if is_hf else model(ids, mask)
    finally:
        handle.remove()
    return seen[-1]


def make_step(model: torch.nn.Module, task: str, is_hf: bool, ids: torch.Tensor, mask: torch.Tensor,
              y: torch.Tensor) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> float:
        if task == "clm" and not is_hf:  # lm's training route: the chunked head + cross-entropy (lm_loss.py)
            loss = model(ids[:, :-1], labels=ids[:, 1:]).loss / ids[:, 1:].numel()
        elif task == "clm":  # what GPT2LMHeadModel(labels=...) computes, minus its extra shifted position
            logits = model(ids[:, :-1], use_cache=False).logits  # (B, L, V)
            loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        else:
            out = model(input_ids=ids, attention_mask=mask) if is_hf else model(ids, mask)
            logits = out.logits.reshape(-1)  # (B,)
            loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench_task(task: str, *, batch: int, seq: int, steps: int, repeats: int, attention: str, hf_attn: str) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, VOCAB, (batch, seq + (1 if task == "clm" else 0)), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()  # right padding (classify only)
    ids = torch.where(mask.bool() | (task == "clm"), ids, torch.ones_like(ids))
    y = (torch.rand(batch, generator=g) < 0.5).float()
    models = {"lm": lm_model(task, ids.shape[1], attention), "hf": hf_model(task, ids.shape[1], hf_attn)}
    if task == "classify":  # the same weights (same seed), every row through the last block
        models["lm_full"] = every_row_in_last_block(lm_model(task, ids.shape[1], attention))
    row: dict = {"task": task, "tokens_per_step": batch * seq,
                 "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}}
    if task == "clm":  # computed, not assumed: the config the step runs with and what its forward returns
        with torch.no_grad():
            out = models["hf"](ids[:2, :-1], use_cache=False)
        row["hf_use_cache"] = bool(models["hf"].config.use_cache)
        row["hf_returned_cache"] = getattr(out, "past_key_values", None) is not None
    else:
        row["last_block_rows"] = {n: last_block_rows(m, n == "hf", ids, mask) for n, m in models.items()}
        models["lm"].eval()  # no dropout: the two lm forms must give the same logits
        models["lm_full"].eval()
        with torch.no_grad():
            a, b = (models[n](ids, mask).logits for n in ("lm", "lm_full"))
        row["lm_full_same_logits"] = bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))
        row["lm_full_max_logit_diff"] = float((a - b).abs().max())
    runners = {name: make_step(m, task, name == "hf", ids, mask, y) for name, m in models.items()}
    for run in runners.values():  # warm-up: allocator, first-call costs
        run(), run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for r in range(repeats * steps):  # step by step; each model goes first in turn
        k = r % len(order)
        for name in order[k:] + order[:k]:
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    tokens = batch * seq
    for name, ts in times.items():
        row[f"{name}_s_per_step"] = round(statistics.median(ts), 4)
        row[f"{name}_tokens_per_s"] = round(tokens / statistics.median(ts), 1)
    row["ratio_lm_over_hf"] = round(row["lm_tokens_per_s"] / row["hf_tokens_per_s"], 3)
    if "lm_full" in models:
        row["ratio_lm_full_over_hf"] = round(row["lm_full_tokens_per_s"] / row["hf_tokens_per_s"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 8, 3 repeats of 2 steps")
    ap.add_argument("--tasks", default="clm,classify")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat (default 4, quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 5, quick 3): steps x repeats timed")
    ap.add_argument("--attention", default="standard", help="lm attention kind")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=None)
    record.add_save_arg(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (8 if args.quick else 32)
    steps = args.steps or (2 if args.quick else 4)
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch} x {args.seq}; "
          f"{steps * repeats} steps per model interleaved step by step; median step time; hf attention {args.hf_attn}")
    print(f"{'task':9} {'lm tok/s':>10} {'hf tok/s':>10} {'lm/hf':>6}   (lm_full: every row in the last block)")
    for task in args.tasks.split(","):
        row = bench_task(task, batch=batch, seq=args.seq, steps=steps, repeats=repeats, attention=args.attention,
                         hf_attn=args.hf_attn)
        rows.append(row)
        print(f"{task:9} {row['lm_tokens_per_s']:>10.0f} {row['hf_tokens_per_s']:>10.0f} {row['ratio_lm_over_hf']:>6.2f}")
        if "lm_full_tokens_per_s" in row:
            print(f"{'  lm_full':9} {row['lm_full_tokens_per_s']:>10.0f} {row['hf_tokens_per_s']:>10.0f} "
                  f"{row['ratio_lm_full_over_hf']:>6.2f}", flush=True)
    record.finish({"benchmark": "train_step", "threads": torch.get_num_threads(), "batch": batch, "seq": args.seq,
                   "steps": steps, "repeats": repeats, "attention": args.attention, "hf_attn": args.hf_attn,
                   "results": rows}, quick=args.quick, save=not args.no_save)


if __name__ == "__main__":
    main()
