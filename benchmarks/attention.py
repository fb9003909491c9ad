"""Attention kinds: forward+backward time and peak memory against sequence length, one run for all kinds, and
the fused softmax core (F.scaled_dot_product_attention) against the explicit one it replaced.

    python benchmarks/attention.py             # 14 kinds x L = 256 .. 8192, batch 1, d_model 256, 4 heads
    python benchmarks/attention.py --quick     # 4 kinds, L = 256 .. 2048, + fused vs explicit
                                               # (under a minute)
    python benchmarks/attention.py --causal    # the decoder form (prefix sums / causal mask)

One attention layer (lm's full module: fused qkv projection, kernel, output projection) is run on a random
(1, L, 256) input; a pass is forward + backward of sum(out^2) w.r.t. the input and the weights. The default
is the bidirectional (encoder) form without padding. Each kind runs as lm trains it: `standard` and `rotary`
through the fused core (lm.model.attention.base, `fused_core`).

Fused vs explicit: `standard` attention at L = 1024, 2048, 4096, 8192 (`--fused-lengths`), once as lm runs it
(fused: F.scaled_dot_product_attention, no L x L matrix) and once with the layer's `fused` switched off (the
explicit path: scores, in-place mask, softmax, weights @ v, every (H, L, L) tensor autograd needs kept for
backward; what `return_attention` runs for `lm viz`). The JSON gains `fused_memory_ratio_8k` and
`fused_time_ratio_8k` (fused / explicit at the longest length; target memory ratio <= 0.25).

Peak memory, CPU method: every (kind, L) case runs in a fresh worker process (multiprocessing "forkserver",
whose server has imported torch and lm once, so a case costs no interpreter start-up). After building the
layer and its input the worker reads its resident-set high-water mark (getrusage ru_maxrss), runs one pass,
and reads it again: the difference is the extra resident memory the pass needed at its peak (activations
saved for backward, score matrices, gradients), independent of the interpreter's and torch's own footprint
and of what other cases left in the allocator. This is real memory, as the operating system sees it
(tracemalloc sees none of torch's allocations). With CUDA (`--device cuda`) torch.cuda.max_memory_allocated is
used instead. Time is the median of the passes after the first (as many as fit in `--budget` seconds, at most
10); a case whose first pass alone exceeds the budget reports that first pass (at that size every pass
allocates and faults in fresh memory anyway, as the first one did).

Growth: time(8192) / time(1024) and memory(8192) / memory(1024). An 8x longer sequence costs ~8x for the
linear (feature-map) kinds and ~64x in time for the quadratic ones once the L x L score matrices dominate (at
1024 the projections still weigh, so measured quadratic ratios land below 64); memory grows ~64x for the
explicit quadratic kinds (yat, yat-spherical, explicit standard) but ~8x for fused standard / rotary. The last
line is one JSON object, also written to benchmarks/results/attention.json (attention-causal.json with
--causal).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

D_MODEL, HEADS = 256, 4
LENGTHS = [256, 512, 1024, 2048, 4096, 8192]
QUICK_KINDS = ["standard", "linear", "performer", "slay-anchor"]
QUICK_LENGTHS = [256, 512, 1024, 2048]
FUSED_KIND = "standard"
FUSED_LENGTHS = [1024, 2048, 4096, 8192]  # the same in --quick: the point is the long end
MAX_PASSES = 10


def worker(
    kind: str, L: int, causal: bool, budget: float, device: str, threads: int | None, explicit: bool = False
) -> dict:
    """One case, in its own process: build, measure the first pass's peak memory, then time passes.
    explicit: run a fused kind's explicit softmax path instead (the layer's `fused` switched off)."""
    import torch

    from lm.model.attention import Pass, attention_class, resolve_attention_options

    if threads:
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    torch.manual_seed(0)
    layer = attention_class(kind)(
        d_model=D_MODEL,
        n_heads=HEADS,
        bias=True,
        attention_dropout=0.0,
        max_len=L,
        options=resolve_attention_options(kind, {}),
        generator=torch.Generator().manual_seed(0),
    ).to(device)
    if explicit:
        layer.fused = False
    x = torch.randn(1, L, D_MODEL, device=device, requires_grad=True)

    def one_pass(inp: torch.Tensor = x) -> float:
        start = time.perf_counter()
        out = layer(inp, Pass(causal=causal)).out  # (1, L, E)
        out.square().sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        inp.grad = None
        layer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    # a tiny pass first: loads the backward code paths and starts autograd's threads, so their one-off
    # resident memory is not counted against the measured case
    one_pass(torch.randn(1, 8, D_MODEL, device=device, requires_grad=True))

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        first = one_pass()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        first = one_pass()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    n = min(MAX_PASSES, int(budget / max(first, 1e-6)))
    times = [one_pass() for _ in range(n)]
    return {
        "kind": kind,
        "L": L,
        "seconds": statistics.median(times) if times else first,
        "first_s": first,
        "passes": len(times),
        "peak_mib": peak / 2**20,
    }


def _child(conn, *args) -> None:  # type: ignore[no-untyped-def]
    try:
        conn.send(worker(*args))
    except BaseException as err:
        conn.send({"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"})
    finally:
        conn.close()


def run_case(ctx, args: argparse.Namespace, kind: str, L: int, explicit: bool = False) -> dict:  # type: ignore[no-untyped-def]
    """Run one case in a fresh process from the fork server; its result comes back through a pipe."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_child, args=(send, kind, L, args.causal, args.budget, args.device, args.threads, explicit)
    )
    proc.start()
    send.close()
    result = (
        recv.recv() if recv.poll(args.case_timeout) else {"error": f"timeout after {args.case_timeout} s"}
    )
    if proc.is_alive():
        proc.kill()
    proc.join()
    if not result and proc.exitcode:
        result = {"error": f"worker exited with code {proc.exitcode} (out of memory?)"}
    return {"kind": kind, "L": L, **result}


def growth(rows: dict[int, dict], key: str, lo: int = 1024, hi: int = 8192) -> float | None:
    a, b = rows.get(lo), rows.get(hi)
    if not a or not b or "error" in a or "error" in b or a[key] <= 0:
        return None
    return round(b[key] / a[key], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"kinds {', '.join(QUICK_KINDS)}; L up to 2048")
    ap.add_argument("--kinds", default=None, help="comma-separated kinds (default: all 14)")
    ap.add_argument("--lengths", default=None, help="comma-separated sequence lengths")
    ap.add_argument(
        "--causal", action="store_true", help="causal (decoder) attention instead of bidirectional"
    )
    ap.add_argument(
        "--fused-lengths",
        default=",".join(map(str, FUSED_LENGTHS)),
        help="lengths of the fused vs explicit comparison ('' to skip it)",
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="seconds of timed passes per case (default 2, quick 1)"
    )
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per case (default 1: on a shared 2-core machine a 2-thread team waits on a "
        "descheduled thread at every op and small cases become noise)",
    )
    ap.add_argument("--case-timeout", type=float, default=300.0)
    ap.add_argument(
        "--no-save",
        action="store_true",
        help="print the JSON line only; do not write benchmarks/results/attention[-causal].json",
    )
    args = ap.parse_args()
    if args.budget is None:
        args.budget = 1.0 if args.quick else 2.0
    import multiprocessing as mp

    from lm.config import ATTENTION_KINDS

    kinds = args.kinds.split(",") if args.kinds else (QUICK_KINDS if args.quick else list(ATTENTION_KINDS))
    lengths = (
        [int(v) for v in args.lengths.split(",")]
        if args.lengths
        else (QUICK_LENGTHS if args.quick else LENGTHS)
    )
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lm.model.attention"])
    lo, hi = (1024, 8192) if 8192 in lengths and 1024 in lengths else (lengths[0], lengths[-1])
    mode = "causal" if args.causal else "bidirectional"
    print(
        f"{mode} attention, batch 1, d_model {D_MODEL}, {HEADS} heads, device {args.device}; "
        f"{args.threads} thread(s); forward+backward ms / peak extra MiB (one process per case)"
    )
    print(f"{'kind':14}" + "".join(f"{L:>16}" for L in lengths) + f"{'time x':>9}{'mem x':>8}  ({lo}->{hi})")
    started = time.perf_counter()
    results = []
    for kind in kinds:
        rows: dict[int, dict] = {}
        for L in lengths:
            rows[L] = run_case(ctx, args, kind, L)
        cells = [
            ("error" if "error" in rows[L] else f"{rows[L]['seconds'] * 1e3:.0f}/{rows[L]['peak_mib']:.0f}")
            for L in lengths
        ]
        t_x, m_x = growth(rows, "seconds", lo, hi), growth(rows, "peak_mib", lo, hi)
        print(
            f"{kind:14}"
            + "".join(f"{c:>16}" for c in cells)
            + f"{t_x if t_x else '-':>9}{m_x if m_x else '-':>8}",
            flush=True,
        )
        for L in lengths:
            if "error" in rows[L]:
                print(f"  {kind} L={L}: {rows[L]['error']}", flush=True)
        results.append(
            {
                "kind": kind,
                "time_growth": t_x,
                "memory_growth": m_x,
                "cases": [
                    {
                        k: (round(v, 4) if isinstance(v, float) else v)
                        for k, v in rows[L].items()
                        if k != "kind"
                    }
                    for L in lengths
                ],
            }
        )
    fused = compare_fused(ctx, args, [int(v) for v in args.fused_lengths.split(",") if v.strip()])
    import record  # benchmarks/ (this script's folder) is on sys.path

    record.finish(
        {
            "benchmark": "attention" if mode == "bidirectional" else "attention-causal",
            "mode": mode,
            "device": args.device,
            "threads": args.threads,
            "d_model": D_MODEL,
            "heads": HEADS,
            "batch": 1,
            "lengths": lengths,
            "growth_from_to": [lo, hi],
            "wall_s": round(time.perf_counter() - started, 1),
            "results": results,
            **fused,
        },
        quick=args.quick,
        save=not args.no_save,
    )


def compare_fused(ctx, args: argparse.Namespace, lengths: list[int]) -> dict:  # type: ignore[no-untyped-def]
    """`standard` attention, fused and explicit, at each length: the rows printed and the JSON keys."""
    if not lengths:
        return {}
    print(
        f"\n{FUSED_KIND} attention, fused (F.scaled_dot_product_attention) vs explicit; "
        "forward+backward ms / peak extra MiB"
    )
    print(f"{'L':>6}{'explicit':>16}{'fused':>16}{'time f/e':>10}{'mem f/e':>9}")
    cases = []
    for L in lengths:
        ex, fu = run_case(ctx, args, FUSED_KIND, L, explicit=True), run_case(ctx, args, FUSED_KIND, L)
        ok = "error" not in ex and "error" not in fu
        t_r = round(fu["seconds"] / ex["seconds"], 3) if ok else None
        m_r = round(fu["peak_mib"] / ex["peak_mib"], 4) if ok and ex["peak_mib"] > 0 else None
        cell = {
            r: ("error" if "error" in c else f"{c['seconds'] * 1e3:.0f}/{c['peak_mib']:.0f}")
            for r, c in (("ex", ex), ("fu", fu))
        }
        print(
            f"{L:>6}{cell['ex']:>16}{cell['fu']:>16}{t_r if t_r else '-':>10}{m_r if m_r else '-':>9}",
            flush=True,
        )
        for name, c in (("explicit", ex), ("fused", fu)):
            if "error" in c:
                print(f"  {name} L={L}: {c['error']}", flush=True)
        rounded = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items() if k not in ("kind", "L")}
            for c in (ex, fu)
        ]
        cases.append(
            {"L": L, "explicit": rounded[0], "fused": rounded[1], "time_ratio": t_r, "memory_ratio": m_r}
        )
    last = cases[-1]
    suffix = f"{last['L'] // 1024}k" if last["L"] % 1024 == 0 else str(last["L"])
    return {
        "fused": {"kind": FUSED_KIND, "lengths": lengths, "cases": cases},
        f"fused_memory_ratio_{suffix}": last["memory_ratio"],
        f"fused_time_ratio_{suffix}": last["time_ratio"],
    }


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
