"""Training-step throughput: lm's model vs the Hugging Face model of the same size, measured side by side.

    python benchmarks/train_step.py            # d_model 256, 4 layers, 4 heads, d_ff 1024, vocab 8192,
                                               # 32 x 128
    python benchmarks/train_step.py --quick    # batch 8, fewer repeats (well under a minute)
    python benchmarks/train_step.py --device cuda [--compile]   # GPT-2 small, bf16 autocast: tokens/s and MFU

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
              that row alone (keys and values still from every row; SequenceClassifier.cls_hidden in
              lm/model/tasks.py). BERT computes every row of its last block;
            - `lm_full`: the same model with the last block computing every row, as BERT does (the benchmark
              sets the instance's `cls_row_only` to False; lm's code and defaults unchanged).
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

On a GPU (`--device cuda`) the models are GPT-2 small sized (124M parameters: 12 layers, d_model 768, 12
heads, d_ff 3072, GPT-2's vocabulary 50,257 rounded up to 50,304 as nanoGPT does, 1,024 tokens), the causal LM
only, under bf16 autocast (`--amp`), optionally torch.compile'd (`--compile`), and each clm row also gives
`tokens_per_s` (lm's) and `mfu`: model FLOPs utilisation, the model's training FLOPs per second over the GPU's
dense bf16 peak. FLOPs per token = 6 N + 12 n_layers d_model T (PaLM, appendix B; nanoGPT's estimate_mfu):
N counts every weight that multiplies (the tied token embedding is the LM head) but not the position table,
and the attention term counts causal attention in full. The peak comes from PEAK_BF16_TFLOPS by the GPU's
name, or `--peak-tflops` (which also adds the two keys on CPU). A GPU run is benchmark `train_step_cuda`
(benchmarks/results/train_step_cuda.json, beside the CPU figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record


@dataclass(frozen=True)
class Shape:
    d: int
    layers: int
    heads: int
    ff: int
    vocab: int


CPU_SHAPE = Shape(d=256, layers=4, heads=4, ff=1024, vocab=8192)
GPT2_SMALL = Shape(d=768, layers=12, heads=12, ff=3072, vocab=50304)  # 124M; GPT-2's 50257 rounded up to 64s

# dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; the first name that is a
# substring of torch.cuda.get_device_name() wins (so the PCIe and NVL forms come before the SXM default)
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


def peak_bf16_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU named like torch.cuda.get_device_name() returns, or None if unknown."""
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in gpu_name), None)


def flops_per_token(model: torch.nn.Module, shape: Shape, seq: int, max_len: int) -> float:
    """Training FLOPs per token (forward + backward) = 6 N + 12 n_layers d_model T, with N the parameters less
    the learned position table (max_len x d_model: looked up, never multiplied)."""
    n = sum(p.numel() for p in model.parameters()) - max_len * shape.d
    return 6.0 * n + 12.0 * shape.layers * shape.d * seq


def lm_model(task: str, max_len: int, attention: str, shape: Shape = CPU_SHAPE) -> torch.nn.Module:
    from lm.config import ModelConfig
    from lm.model import build_model

    cfg = ModelConfig(
        d_model=shape.d,
        n_layers=shape.layers,
        n_heads=shape.heads,
        d_ff=shape.ff,
        dropout=0.1,
        attention_dropout=0.1,
        attention=attention,
        positions="learned",
        norm="layernorm",
        norm_position="pre" if task == "clm" else "post",
        mlp="gelu",
        bias=True,
        tie_embeddings=True,
        pooling="cls",
    )
    return build_model(cfg, task=task, vocab_size=shape.vocab, max_len=max_len, pad_id=1, seed=0)


def hf_model(task: str, max_len: int, attn: str, shape: Shape = CPU_SHAPE) -> torch.nn.Module:
    import transformers

    transformers.logging.set_verbosity_error()
    if task == "clm":
        cfg = transformers.GPT2Config(
            vocab_size=shape.vocab,
            n_embd=shape.d,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.ff,
            n_positions=max_len,
            activation_function="gelu",
            bos_token_id=0,
            eos_token_id=0,
            use_cache=False,
        )  # training: no keys/values kept
        return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation=attn)
    cfg = transformers.BertConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.d,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.ff,
        max_position_embeddings=max_len,
        num_labels=1,
        pad_token_id=1,
    )
    return transformers.BertForSequenceClassification._from_config(cfg, attn_implementation=attn)


def every_row_in_last_block(model: torch.nn.Module) -> torch.nn.Module:
    """lm's classifier with its last block computing every row, as BERT's does: SequenceClassifier's
    `cls_row_only` switched off on this instance; nothing else changes."""
    model.cls_row_only = False
    return model


def last_block_rows(model: torch.nn.Module, is_hf: bool, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """How many rows (positions) the last block of a classifier outputs, counted by a forward hook (on lm's
    last MLP, which runs on exactly the rows its block outputs)."""
    block = model.bert.encoder.layer[-1] if is_hf else model.trunk.blocks[-1].mlp
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


def make_step(
    model: torch.nn.Module,
    task: str,
    is_hf: bool,
    ids: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    amp: str = "none",
    compile: bool = False,
) -> Callable[[], float]:
    """One training step on the batch (on the model's device); `loss.item()` at the end waits for the GPU, so
    a step's wall time is its whole work. amp: bf16 autocast around forward and loss, as lm trains."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    run = torch.compile(model) if compile else model
    device_type = ids.device.type
    # every position of a clm row is labelled: their flat indices, as CausalLMObjective finds them on the host
    label_rows = torch.arange(ids[:, 1:].numel(), device=ids.device)

    def step() -> float:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            if task == "clm" and not is_hf:  # lm's training route: the chunked head + cross-entropy
                loss = run(ids[:, :-1], labels=ids[:, 1:], label_rows=label_rows).loss / ids[:, 1:].numel()
            elif task == "clm":  # what GPT2LMHeadModel(labels=...) computes, minus its extra shifted position
                logits = run(ids[:, :-1], use_cache=False).logits  # (B, L, V)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            else:
                out = run(input_ids=ids, attention_mask=mask) if is_hf else run(ids, mask)
                logits = out.logits.reshape(-1)  # (B,)
                loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench_task(
    task: str,
    *,
    batch: int,
    seq: int,
    steps: int,
    repeats: int,
    attention: str,
    hf_attn: str,
    shape: Shape = CPU_SHAPE,
    device: str = "cpu",
    amp: str = "none",
    compile: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, shape.vocab, (batch, seq + (1 if task == "clm" else 0)), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()  # right padding (classify only)
    ids = torch.where(mask.bool() | (task == "clm"), ids, torch.ones_like(ids))
    y = (torch.rand(batch, generator=g) < 0.5).float()
    ids, mask, y = ids.to(device), mask.to(device), y.to(device)
    models = {
        "lm": lm_model(task, ids.shape[1], attention, shape).to(device),
        "hf": hf_model(task, ids.shape[1], hf_attn, shape).to(device),
    }
    if task == "classify":  # the same weights (same seed), every row through the last block
        models["lm_full"] = every_row_in_last_block(lm_model(task, ids.shape[1], attention, shape)).to(device)
    row: dict = {
        "task": task,
        "tokens_per_step": batch * seq,
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()},
    }
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
    flops = {name: flops_per_token(m, shape, seq, ids.shape[1]) for name, m in models.items()}
    runners = {
        name: make_step(m, task, name == "hf", ids, mask, y, amp, compile) for name, m in models.items()
    }
    for run in runners.values():  # warm-up: allocator, first-call costs (and the compile)
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
    if peak_tflops and task == "clm":  # model FLOPs utilisation against the GPU's (or the given) bf16 peak
        row["flops_per_token"] = {name: round(f) for name, f in flops.items()}
        row["tokens_per_s"] = row["lm_tokens_per_s"]
        row["mfu"] = round(flops["lm"] * row["lm_tokens_per_s"] / (peak_tflops * 1e12), 4)
        row["hf_mfu"] = round(flops["hf"] * row["hf_tokens_per_s"] / (peak_tflops * 1e12), 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 8, 3 repeats of 2 steps")
    ap.add_argument("--tasks", default=None, help="default clm,classify (cuda: clm)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None, help="default 128 (cuda: 1024)")
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat (default 4, quick 2)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="repeats (default 5, quick 3): steps x repeats timed"
    )
    ap.add_argument("--attention", default="standard", help="lm attention kind")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: GPT-2 small (124M) causal LM, 1024 tokens, bf16, with tokens/s and MFU",
    )
    ap.add_argument(
        "--amp", default=None, choices=["none", "bf16"], help="autocast (default: bf16 on cuda, none on cpu)"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak for the MFU (default: from the GPU's name; needed for a GPU not listed)",
    )
    record.add_save_arg(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU")
    gpu_name = torch.cuda.get_device_name() if gpu else None
    peak = args.peak_tflops or (peak_bf16_tflops(gpu_name) if gpu else None)
    if gpu and peak is None:
        print(f"{gpu_name}: bf16 peak unknown, no MFU (pass --peak-tflops)", file=sys.stderr)
    shape = GPT2_SMALL if gpu else CPU_SHAPE
    amp = args.amp or ("bf16" if gpu else "none")
    seq = args.seq or (1024 if gpu else 128)
    tasks = args.tasks or ("clm" if gpu else "clm,classify")
    batch = args.batch or (8 if args.quick or gpu else 32)
    steps = args.steps or (2 if args.quick else 4)
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    where = (
        f"{gpu_name}, {shape.layers} layers x d_model {shape.d}, amp {amp}"
        if gpu
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__}, {where}; batch {batch} x {seq}; "
        f"{steps * repeats} steps per model interleaved step by step; median step time; hf attention "
        f"{args.hf_attn}" + ("; compiled" if args.compile else "")
    )
    print(
        f"{'task':9} {'lm tok/s':>10} {'hf tok/s':>10} {'lm/hf':>6}   (lm_full: every row in the last block)"
    )
    for task in tasks.split(","):
        row = bench_task(
            task,
            batch=batch,
            seq=seq,
            steps=steps,
            repeats=repeats,
            attention=args.attention,
            hf_attn=args.hf_attn,
            shape=shape,
            device=args.device,
            amp=amp,
            compile=args.compile,
            peak_tflops=peak,
        )
        rows.append(row)
        mfu = f"   MFU lm {row['mfu']:.1%}, hf {row['hf_mfu']:.1%}" if "mfu" in row else ""
        print(
            f"{task:9} {row['lm_tokens_per_s']:>10.0f} {row['hf_tokens_per_s']:>10.0f} "
            f"{row['ratio_lm_over_hf']:>6.2f}{mfu}"
        )
        if "lm_full_tokens_per_s" in row:
            print(
                f"{'  lm_full':9} {row['lm_full_tokens_per_s']:>10.0f} {row['hf_tokens_per_s']:>10.0f} "
                f"{row['ratio_lm_full_over_hf']:>6.2f}",
                flush=True,
            )
    figures = {
        "benchmark": "train_step_cuda" if gpu else "train_step",
        "threads": torch.get_num_threads(),
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "repeats": repeats,
        "attention": args.attention,
        "hf_attn": args.hf_attn,
        "results": rows,
    }
    if gpu or peak:
        figures.update(
            device=args.device,
            gpu=gpu_name,
            amp=amp,
            compile=args.compile,
            peak_tflops=peak,
            model={
                "d_model": shape.d,
                "n_layers": shape.layers,
                "n_heads": shape.heads,
                "d_ff": shape.ff,
                "vocab": shape.vocab,
            },
        )
    record.finish(figures, quick=args.quick, save=not args.no_save)


if __name__ == "__main__":
    main()
