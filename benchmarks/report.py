"""The speed tables of docs/results.md, generated from the saved benchmark figures (benchmarks/results/).

    python benchmarks/report.py            # print the tables
    python benchmarks/report.py --write    # replace docs/results.md's speed-table / serve-table sections
    python benchmarks/report.py --check    # exit 1 when docs/results.md's tables differ from the results

Each benchmark writes its last JSON line to benchmarks/results/<name>.json (benchmarks/record.py); this script
turns every file present into rows of one Markdown table: what is compared (A, usually lm, vs B, the
reference), the figure, A's value, B's, A's speed over B's (above 1: A is faster), the checks the run computed
(ids identical, same tokens, ...) and whether it was a full or a `--quick` run. Below the table, one line per
file says how and where it was run. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "results.md"
START, END = "<!-- speed-table:start -->", "<!-- speed-table:end -->"
SERVE_START, SERVE_END = "<!-- serve-table:start -->", "<!-- serve-table:end -->"
HEADER = ("comparison: A vs B", "figure", "A", "B", "speed A / B", "checks", "run")

Row = tuple[str, str, str, str, str, str]  # every column but "run"


def _yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def _n(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def train_step(f: dict) -> Iterator[Row]:
    shape = f"batch {f['batch']} x {f['seq']}"
    for r in f["results"]:
        if r["task"] == "clm":
            cache_off = not r.get("hf_use_cache", True) and not r.get("hf_returned_cache", True)
            yield (
                f"training step, causal LM ({shape}): lm `CausalLM` vs `GPT2LMHeadModel` (`use_cache=False`)",
                "tokens/s",
                _n(r["lm_tokens_per_s"]),
                _n(r["hf_tokens_per_s"]),
                _x(r["ratio_lm_over_hf"]),
                f"GPT-2 cache off: {_yes(cache_off)}",
            )
        elif r["task"] == "classify":
            rows = r.get("last_block_rows", {})
            same = (
                f"; same logits as the CLS-only form: {_yes(r['lm_full_same_logits'])}"
                if "lm_full_same_logits" in r
                else ""
            )
            yield (
                f"training step, classifier ({shape}): lm `SequenceClassifier` as it trains (last block "
                "computes the CLS row only) vs `BertForSequenceClassification`",
                "tokens/s",
                _n(r["lm_tokens_per_s"]),
                _n(r["hf_tokens_per_s"]),
                _x(r["ratio_lm_over_hf"]),
                f"last-block rows: lm {rows.get('lm', '?')}, BERT {rows.get('hf', '?')}",
            )
            if "lm_full_tokens_per_s" in r:
                yield (
                    f"training step, classifier ({shape}): lm with every row through the last block (BERT's "
                    "work) vs `BertForSequenceClassification`",
                    "tokens/s",
                    _n(r["lm_full_tokens_per_s"]),
                    _n(r["hf_tokens_per_s"]),
                    _x(r["ratio_lm_full_over_hf"]),
                    f"last-block rows: lm {rows.get('lm_full', '?')}, BERT {rows.get('hf', '?')}{same}",
                )


def finetune(f: dict) -> Iterator[Row]:
    """benchmarks/finetune.py: a fine-tuning step from one Hugging Face checkpoint, lm vs transformers."""
    names = {
        "classify": ("BERT classifier", "`SequenceClassifier`", "`BertForSequenceClassification`"),
        "clm": ("GPT-2 causal LM", "`CausalLM`", "`GPT2LMHeadModel`"),
    }
    for r in f["results"]:
        what, ours, theirs = names[r["task"]]
        m = r["model"]
        yield (
            f"fine-tuning step from a Hugging Face checkpoint, {what} (d {m['d']}, {m['layers']} layers, "
            f"vocab {m['vocab']:,}; batch {r['batch']} x {r['seq']}): lm {ours} + `init_from` vs {theirs}",
            "ms/step",
            _n(r["lm_ms_per_step"]),
            _n(r["hf_ms_per_step"]),
            _x(r["lm_over_hf_speed"]),
            f"same initial loss: {_yes(r['same_initial_loss'])}",
        )


def train_step_cuda(f: dict) -> Iterator[Row]:
    """The GPU run of benchmarks/train_step.py: GPT-2 small sized, with the model FLOPs utilisation."""
    how = f"{f['amp']}" + (", compiled" if f.get("compile") else "")
    for r in f["results"]:
        if r["task"] != "clm":
            continue
        mfu = (
            f"MFU lm {r['mfu']:.1%}, GPT-2 {r['hf_mfu']:.1%} of {f['peak_tflops']:g} TFLOP/s bf16"
            if "mfu" in r
            else "MFU: peak of this GPU unknown"
        )
        yield (
            f"training step on {f['gpu']}, GPT-2 small sized causal LM (batch {f['batch']} x {f['seq']}, "
            f"{how}): lm `CausalLM` vs `GPT2LMHeadModel` (`use_cache=False`)",
            "tokens/s",
            _n(r["lm_tokens_per_s"]),
            _n(r["hf_tokens_per_s"]),
            _x(r["ratio_lm_over_hf"]),
            mfu,
        )


def gpu(f: dict) -> Iterator[Row]:
    """benchmarks/gpu_check.py: its training steps, lm eager and compiled vs Hugging Face on the same GPU."""
    names = {
        "clm": ("GPT-2 small sized causal LM", "`GPT2LMHeadModel`"),
        "classify": ("BERT-base sized classifier", "`BertForSequenceClassification`"),
    }
    loss = f.get("loss_equality", {}).get("bf16", {})
    same = f"; bf16 losses = fp32's: {_yes(loss['pass'])}" if "pass" in loss else ""
    for task, (what, theirs) in names.items():
        r = f.get("train_step", {}).get(task, {})
        for name, how in (("lm", "eager"), ("lm_compiled", "compiled")):
            ours, hf = r.get(name, {}), r.get("hf", {})
            if "tokens_per_s" not in ours or "tokens_per_s" not in hf:
                continue
            mfu = f"MFU lm {ours['mfu']:.1%}, HF {hf['mfu']:.1%}" if "mfu" in ours else "MFU: peak unknown"
            yield (
                f"training step on {f['device']['name']}, {what} (batch {r['batch']} x {r['seq']}, "
                f"{r['amp']}): lm {how} vs {theirs} eager (gpu_check)",
                "tokens/s",
                _n(ours["tokens_per_s"]),
                _n(hf["tokens_per_s"]),
                _x(ours["tokens_per_s"] / hf["tokens_per_s"]),
                mfu + same,
            )


def encode(f: dict) -> Iterator[Row]:
    yield (
        f"encoding {f['corpus_mb']} MB, vocab {f['vocab_size']:,}: lm `encode_batch` (tiktoken, "
        f"{f['threads']} threads) vs Hugging Face `{f['hf_call']}` (its fastest call here)",
        "MB/s",
        _n(f["lm_batch_mb_s"]),
        _n(f["hf_mb_s"]),
        _x(f["lm_batch_over_hf_speed"]),
        f"ids identical: {_yes(f['ids_identical'])}",
    )


def bpe_train(f: dict) -> Iterator[Row]:
    yield (
        f"BPE training, vocab {f['vocab_size']:,} on {f['corpus_mb']} MB: lm `train_bpe` ({f['lm_workers']} "
        f"workers) vs Hugging Face `BpeTrainer` ({f['hf_threads']} threads)",
        "seconds (best run)",
        f"{f['lm_seconds']:.2f}",
        f"{f['hf_seconds']:.2f}",
        _x(f["hf_seconds"] / f["lm_seconds"]),
        f"learned tokens in common: {f['token_overlap']:.1%}",
    )


def generate(f: dict) -> Iterator[Row]:
    for r in f["results"]:
        yield (
            f"greedy decoding, {r['kind']} attention, {f['prompt_len']} + {r['new_tokens']} tokens: lm with "
            "its KV cache vs the same lm recomputing the context (`use_cache=False`)",
            "tokens/s",
            _n(r["cache_tokens_per_s"]),
            _n(r["no_cache_tokens_per_s"]),
            _x(r["speedup"]),
            f"same tokens: {_yes(r['same_tokens'])}",
        )


def ddp(f: dict) -> Iterator[Row]:
    yield (
        f"DDP training on CPU (d_model {f['d_model']}, {f['layers']} layers): 2 processes vs 1 process, one "
        "thread each",
        "tokens/s",
        _n(f["tokens_per_s_2proc"]),
        _n(f["tokens_per_s_1proc"]),
        _x(f["speedup"]),
        f"scaling efficiency {f['scaling_efficiency']:.0%}; "
        f"vs 1 process x 2 threads: {_x(f['ddp_vs_threads'])}",
    )


def attention(f: dict) -> Iterator[Row]:
    def ms(kind_row: dict, L: int) -> float | None:
        case = next((c for c in kind_row["cases"] if c.get("L") == L), None)
        return None if case is None or "error" in case else case["seconds"] * 1e3

    by_kind = {r["kind"]: r for r in f["results"]}
    L = f["lengths"][-1]
    base = ms(by_kind["standard"], L) if "standard" in by_kind else None
    lo, hi = f["growth_from_to"]
    for kind, r in by_kind.items():
        if kind == "standard" or base is None:
            continue
        t = ms(r, L)
        yield (
            f"{f['mode']} attention layer, forward + backward, L = {L:,}: `{kind}` vs `standard`",
            "ms",
            "error" if t is None else _n(t),
            _n(base),
            "-" if t is None else _x(base / t),
            f"time x{r['time_growth']}, memory x{r['memory_growth']} from L = {lo:,} to {hi:,}",
        )
    yield from fused_attention(f)


def fused_attention(f: dict) -> Iterator[Row]:
    """The fused softmax core vs the explicit one at the longest length compared (benchmarks/attention.py)."""
    fused = f.get("fused")
    case = fused["cases"][-1] if fused and fused.get("cases") else None
    if case is None or "error" in case["fused"] or "error" in case["explicit"]:
        return
    fu, ex = case["fused"], case["explicit"]
    yield (
        f"{f['mode']} attention layer, forward + backward, L = {case['L']:,}: `{fused['kind']}` fused "
        "(`F.scaled_dot_product_attention`) vs its explicit path",
        "ms",
        _n(fu["seconds"] * 1e3),
        _n(ex["seconds"] * 1e3),
        _x(ex["seconds"] / fu["seconds"]),
        f"peak memory {_n(fu['peak_mib'])} vs {_n(ex['peak_mib'])} MiB "
        f"(fused / explicit {case['memory_ratio']})",
    )


def serve(f: dict) -> Iterator[Row]:
    """Per model: `lm serve` batched (its best backend) vs the naive server at concurrency 64, and the batched
    server against the model's own limit (benchmarks/serve.py)."""
    for name, m in f["models"].items():
        best = m["rows"][f"batched {m['best_backend']}"][-1]
        naive = m["rows"]["naive eager"][-1]
        limit = m["limits"][m["best_backend"]]["texts_per_s"]
        yield (
            f"HTTP scoring at concurrency {best['concurrency']} (real comments, one per request), "
            f"{name} model ({m['n_params'] / 1e6:.1f}M parameters): `lm serve` batched {m['best_backend']} "
            "vs the naive server (one request at a time, eager)",
            "requests/s",
            _n(m["batched_rps"]),
            _n(m["naive_rps"]),
            _x(m["throughput_ratio"]),
            f"p99 {_n(best['p99_ms'])} vs {_n(naive['p99_ms'])} ms; server / model limit "
            f"{m['server_over_limit']} (limit {_n(limit)} texts/s); "
            f"errors {best['errors']} / {naive['errors']}",
        )


def scale(f: dict) -> Iterator[Row]:
    """download -> tokenize -> encode on a corpus 10x larger (benchmarks/scale.py): flat peak memory."""
    yield (
        "download + tokenize + encode: a corpus 10x larger vs the 1x corpus",
        "peak RSS growth",
        f"{f['rss_growth']:.2f}x",
        "1x",
        "-",
        f"time growth x{f['time_growth']} (target: memory <= 1.5x)",
    )


RENDERERS: dict[str, Callable[[dict], Iterator[Row]]] = {
    "train_step": train_step,
    "train_step_cuda": train_step_cuda,
    "gpu": gpu,
    "finetune": finetune,
    "encode": encode,
    "bpe_train": bpe_train,
    "generate": generate,
    "ddp": ddp,
    "attention": attention,
    "attention-causal": attention,
    "serve": serve,
    "scale": scale,
}


def load(results_dir: Path = RESULTS) -> dict[str, dict]:
    """benchmark name -> its saved figures, for every results file present."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def render(results: dict[str, dict]) -> str:
    """The Markdown table (and the lines saying how each run was made) for the given figures."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    runs = []
    for name, render_rows in RENDERERS.items():
        if name not in results:
            continue
        f, run = results[name], results[name].get("run", {})
        mode = run.get("mode", "?")
        for row in render_rows(f):
            lines.append("| " + " | ".join([*row, f"{mode}, {run.get('date', '?')[:10]}"]) + " |")
        cpu = f"{run.get('cpu_count', '?')} CPUs" + (f" ({run['cpu_model']})" if run.get("cpu_model") else "")
        cpu += f", {f['gpu']}" if f.get("gpu") else ""
        runs.append(
            f"- `{name}`: `{run.get('command', '?')}` ({mode}) on {run.get('date', '?')}, {cpu}, "
            f"torch {run.get('torch', '?')}, Python {run.get('python', '?')}, commit {run.get('commit', '?')}"
        )
    return "\n".join([*lines, "", "Runs (benchmarks/results/&lt;name&gt;.json):", "", *runs])


def block(results: dict[str, dict]) -> str:
    """What stands between the page's speed-table markers, markers included."""
    note = (
        "<!-- generated by `python benchmarks/report.py --write` from benchmarks/results/*.json: "
        "do not edit by hand -->"
    )
    return f"{START}\n{note}\n\n{render(results)}\n\n{END}"


def serve_block(results: dict[str, dict]) -> str:
    """The page's serve table: every server and concurrency of the saved benchmarks/serve.py run."""
    f = results.get("serve")
    lines = [
        "| model | server | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    models = (f or {}).get("models", {})
    for model, m in models.items():
        for name, cells in m["rows"].items():
            lines += [
                f"| {model} | {name} | {c['concurrency']} | {_n(c['rps'])} | {_n(c['p50_ms'])} | "
                f"{_n(c['p95_ms'])} | {_n(c['p99_ms'])} | {c['errors']} |"
                for c in cells
            ]
    if models:
        lines += [
            "",
            "| model | backend | limit texts/s | chunk | scoring threads x intra-op | server / limit |",
        ]
        lines += ["|---|---|---|---|---|---|"]
        for model, m in models.items():
            lines += [
                f"| {model} | {b} | {_n(lim['texts_per_s'])} | {lim['chunk']} | "
                f"{lim['score_threads']} x {lim['threads']} | {m['over_limit'][b]} |"
                for b, lim in m["limits"].items()
            ]
        run = f.get("run", {})
        lines.append("")
        lines += [
            f"{model} ({m['n_params'] / 1e6:.1f}M parameters): batched {m['best_backend']} / naive at "
            f"concurrency 64 **{m['throughput_ratio']}x**, p99 {m['p99_ms']} ms, server / limit "
            f"**{m['server_over_limit']}**."
            for model, m in models.items()
        ]
        lines.append(
            f"`{run.get('command', '?')}` on {run.get('date', '?')}, {run.get('cpu_count', '?')} CPUs, "
            f"commit {run.get('commit', '?')}."
        )
    note = "<!-- generated by `python benchmarks/report.py --write` from benchmarks/results/serve.json -->"
    return "\n".join([SERVE_START, note, "", *lines, "", SERVE_END])


def replace_block(text: str, new_block: str, start: str = START, end: str = END) -> str:
    """text with its start ... end section replaced by new_block; an error when the markers are missing."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{PAGE.name}: no '{start}' ... '{end}' section to replace")
    return text[:i] + new_block + text[j + len(end) :]


def page_block(text: str, start: str = START, end: str = END) -> str:
    """The page's current section, markers included."""
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{PAGE.name}: no '{start}' ... '{end}' section")
    return text[i : j + len(end)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the page's speed and serve tables")
    mode.add_argument("--check", action="store_true", help="exit 1 if the page's tables are out of date")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--page", type=Path, default=PAGE)
    args = ap.parse_args()
    results = load(args.results)
    new, new_serve = block(results), serve_block(results)
    if args.write:
        text = replace_block(args.page.read_text(), new)
        args.page.write_text(replace_block(text, new_serve, SERVE_START, SERVE_END))
        print(f"wrote the speed and serve tables of {args.page}")
    elif args.check:
        text = args.page.read_text()
        if page_block(text) != new or page_block(text, SERVE_START, SERVE_END) != new_serve:
            sys.exit(
                f"{args.page}: a table differs from {args.results}; run python benchmarks/report.py --write"
            )
        print(f"{args.page.name}: the speed and serve tables are up to date")
    else:
        print(new)
        print(new_serve)


if __name__ == "__main__":
    main()
