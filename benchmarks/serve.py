"""Load test of `lm serve` against the model's own limit: the naive server (one request scored at a time),
dynamic micro-batching per backend, and the raw batched throughput of the model with no HTTP at all.

    python benchmarks/serve.py            # every backend, concurrency 1/16/64, up to 15 s per cell (~12 min)
    python benchmarks/serve.py --quick    # onnx-int8 against naive at concurrency 64 only, 3 s per cell

Two models: the trained one in --model (default models/) and a BERT-shaped encoder of about 21M parameters
(d_model 512, 6 post-norm layers, 8 heads, d_ff 2048, the same tokenizer and max_len) with random weights,
the size of a fine-tuned pretrained encoder, where the model and not the HTTP layer is the cost. Each is
exported by lm's own export (model.onnx, model.int8.onnx) into a temporary folder first.

Per model and backend (eager, onnx, onnx-int8):
- limit: texts/s of `score_rows` (what the server's scoring thread runs: sorted by length, `chunk` rows per
  forward pass, chunks on `score_threads` threads) over pre-tokenized texts in batches of --max-batch, at the
  best chunk size and thread layout: the ceiling for any server of this model on this machine;
- batched: `lm serve` with that chunk size and layout (a params file written for the run), driven by
  closed-loop clients at concurrency 1, 16 and 64 (aiohttp, one comment per request);
- naive: `lm serve --naive` with eager and the serve params as they are (the baseline: one request at a time).
`server_over_limit` = batched req/s at concurrency 64 / limit texts/s of the same backend; `throughput_ratio`
= best batched / naive at 64. The client shares the server's cores. Texts are real comments
(../shared/data/civil_comments/toxic_spans_comments.csv) when present, else the embedded synthetic corpus.
The last line is one JSON object, also written to benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record

REPO = Path(__file__).resolve().parents[1]
COMMENTS = REPO.parent / "shared" / "data" / "civil_comments" / "toxic_spans_comments.csv"
CONCURRENCY = (1, 16, 64)
BACKENDS = ("eager", "onnx", "onnx-int8")
# the ~21M-parameter BERT-shaped encoder (model keys; the tokenizer and max_len are the trained model's)
ENCODER = dict(d_model=512, n_layers=6, n_heads=8, d_ff=2048, norm_position="post", embed_norm=True)
LAYOUTS = ((2, 1), (1, 2))  # (score_threads, intra-op threads per scoring call) on 2 cores


def load_texts(n: int = 2000) -> tuple[list[str], str]:
    if COMMENTS.exists():
        with COMMENTS.open(newline="", encoding="utf-8") as f:
            texts = [row["comment_text"][:2000] for row in csv.DictReader(f) if row["comment_text"].strip()]
        return texts[:n], str(COMMENTS.relative_to(REPO.parent))
    from lm.data.synthetic import generate_corpus

    return generate_corpus(n, seed=0, identities=[])["text"].tolist(), "embedded synthetic corpus"


# ------------------------------------------------------------------------------------------------ models


def encoder_dir(base: Path, out: Path) -> Path:
    """A random-weight BERT-shaped classifier exported like a trained one, with the base model's tokenizer."""
    from lm.config import ModelConfig
    from lm.model import build_model
    from lm.model.export import export_model, read_export_config

    config = {k: v for k, v in read_export_config(base).items() if k not in ("ensemble", "weights_sha256")}
    cfg = ModelConfig(**ENCODER)
    model = build_model(
        cfg,
        task="classify",
        vocab_size=config["vocab_size"],
        max_len=config["max_len"],
        pad_id=config["pad_id"],
    )
    export_model(model, out, {**config, "model": cfg.model_dump(), "seed": 0}, base / "tokenizer")
    return out


def prepare(model_dir: Path, work: Path) -> dict:
    """Export the ONNX artifacts of model_dir into work/serving; the model's size and config."""
    from lm.model.export import load_exported
    from lm.serving.export import write_artifacts

    model, config = load_exported(model_dir)
    export_dir = work / "serving"
    export_dir.mkdir(parents=True)
    write_artifacts(model, config, model_dir, export_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"model_dir": model_dir, "export_dir": export_dir, "config": config, "n_params": n_params}


# ------------------------------------------------------------------------------------------------- limit


def raw_limit(entry: dict, backend: str, texts: list[str], args) -> dict:
    """Texts/s of the server's scoring routine with no HTTP at each chunk size and thread layout; the best."""
    import torch

    from lm.serving.backends import load_scorer
    from lm.serving.batcher import score_rows
    from lm.tokenizer import classifier_rows, load_tokenizer

    config = entry["config"]
    rows = classifier_rows(load_tokenizer(entry["model_dir"] / "tokenizer"), texts, config["max_len"])
    batches = [rows[i : i + args.max_batch] for i in range(0, len(rows), args.max_batch)]
    chunks = (4, 16) if args.quick else (4, 8, 16, 32, 64)
    cells = []
    for score_threads, threads in LAYOUTS[:1] if args.quick else LAYOUTS:
        torch.set_num_threads(threads)
        scorer = load_scorer(entry["model_dir"], backend, entry["export_dir"], threads=threads)
        pool = ThreadPoolExecutor(score_threads) if score_threads > 1 else None
        for chunk in chunks:
            score_rows(scorer, batches[0], config["pad_id"], chunk, pool)  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.limit_seconds:
                batch = batches[done // args.max_batch % len(batches)]
                score_rows(scorer, batch, config["pad_id"], chunk, pool)
                done += len(batch)
            rate = done / (time.perf_counter() - start)
            cells.append(
                {"score_threads": score_threads, "threads": threads, "chunk": chunk, "texts_per_s": rate}
            )
        if pool is not None:
            pool.shutdown()
        del scorer  # its session's threads must not compete with the servers measured next
        gc.collect()
    best = max(cells, key=lambda c: c["texts_per_s"])
    return {
        **{k: best[k] for k in ("score_threads", "threads", "chunk")},
        "texts_per_s": round(best["texts_per_s"], 1),
    }


# ------------------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(params: Path, entry: dict, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lm.cli", "serve", "--params", str(params), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--model", str(entry["model_dir"]), "--export-dir", str(entry["export_dir"])]
    proc = subprocess.Popen(
        [*cmd, *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lm serve {' '.join(extra)} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"lm serve {' '.join(extra)} was not ready within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def serve_params(base: Path, out: Path, layout: dict) -> Path:
    """params.yaml with the serve section set to the limit's best chunk size and thread layout."""
    raw = yaml.safe_load(base.read_text()) if base.exists() else {}
    serve = raw.setdefault("serve", {})
    serve.update(
        score_chunk=layout["chunk"], score_threads=layout["score_threads"], threads=layout["threads"]
    )
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


async def drive(url: str, texts: list[str], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """`concurrency` closed-loop clients over keep-alive connections; latencies of the answers 200. The client
    shares the server's cores, so it should cost as little CPU as possible: aiohttp when installed, else
    httpx with one AsyncClient per connection."""
    rng = random.Random(concurrency)
    latencies: list[float] = []
    errors = sent = 0
    post = await _poster(url, concurrency)

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        status = await post({"texts": [rng.choice(texts)]})
        if status == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors += 1

    async def client_loop(deadline: float) -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            sent += 1
            await one()

    try:
        await asyncio.gather(*(one() for _ in range(concurrency)))  # warm-up: connections, caches
        latencies.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(start + max_seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        await post(None)  # closes the client
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


async def _poster(url: str, concurrency: int):
    """An async `post(body) -> status` over `concurrency` keep-alive connections; `post(None)` closes it."""
    try:
        import aiohttp
    except ImportError:
        aiohttp = None
    if aiohttp is not None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=30)
        )

        async def post(body):
            if body is None:
                await session.close()
                return 0
            async with session.post(url + "/v1/score", json=body) as r:
                await r.read()
                return r.status

        return post
    clients = [httpx.AsyncClient(base_url=url, timeout=30) for _ in range(concurrency)]
    free = asyncio.Queue()
    for c in clients:
        free.put_nowait(c)

    async def post(body):
        if body is None:
            await asyncio.gather(*(c.aclose() for c in clients))
            return 0
        client = await free.get()
        try:
            return (await client.post("/v1/score", json=body)).status_code
        finally:
            free.put_nowait(client)

    return post


def load_test(params: Path, entry: dict, extra: list[str], texts: list[str], args, name: str) -> list[dict]:
    port = free_port()
    proc = start_server(params, entry, port, extra)
    cells = []
    try:
        for c in args.concurrency:
            cell = asyncio.run(
                drive(f"http://127.0.0.1:{port}", texts, c, args.max_requests, args.max_seconds)
            )
            cells.append(cell)
            print(
                f"{name:<28} {c:>4} {cell['rps']:>8} {cell['p50_ms']:>8} {cell['p95_ms']:>8} "
                f"{cell['p99_ms']:>8} {cell['errors']:>6}",
                flush=True,
            )
    finally:
        stop_server(proc)
    return cells


# -------------------------------------------------------------------------------------------------- main


def measure(label: str, entry: dict, texts: list[str], args, work: Path) -> dict:
    """One model: its limit per backend, the naive server and the batched server per backend."""
    batching = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    rows: dict[str, list[dict]] = {}
    limits: dict[str, dict] = {}
    for backend in args.backends:
        limits[backend] = raw_limit(entry, backend, texts, args)
        print(f"{label} {backend} limit: {limits[backend]}", flush=True)
    rows["naive eager"] = load_test(args.params, entry, ["--naive"], texts, args, f"{label} naive eager")
    for backend in args.backends:
        params = serve_params(args.params, work / f"{label}-{backend}.yaml", limits[backend])
        extra = [*batching, "--backend", backend]
        rows[f"batched {backend}"] = load_test(
            params, entry, extra, texts, args, f"{label} batched {backend}"
        )
    at64 = {name: cells[-1] for name, cells in rows.items()}
    best = max(args.backends, key=lambda b: at64[f"batched {b}"]["rps"])
    best_rps = at64[f"batched {best}"]["rps"]
    return {
        "n_params": entry["n_params"],
        "max_len": entry["config"]["max_len"],
        "limits": limits,
        "naive_rps": at64["naive eager"]["rps"],
        "batched_rps": best_rps,
        "best_backend": best,
        "throughput_ratio": round(best_rps / at64["naive eager"]["rps"], 2),
        "p99_ms": at64[f"batched {best}"]["p99_ms"],
        "server_over_limit": round(best_rps / limits[best]["texts_per_s"], 3),
        "over_limit": {
            b: round(at64[f"batched {b}"]["rps"] / limits[b]["texts_per_s"], 3) for b in args.backends
        },
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="up to 4 s / 600 requests per cell")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", type=Path, default=Path("models"))
    ap.add_argument("--no-encoder", action="store_true", help="only the model in --model")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    record.add_save_arg(ap)
    args = ap.parse_args()
    args.max_requests, args.max_seconds = (20_000, 3.0) if args.quick else (3000, 15.0)
    args.limit_seconds = 0.5 if args.quick else 3.0
    args.concurrency = (64,) if args.quick else CONCURRENCY
    args.backends = ("onnx-int8",) if args.quick else BACKENDS
    texts, source = load_texts()
    print(f"{'server':<28} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    with tempfile.TemporaryDirectory(prefix="lm-serve-bench-") as tmp:
        work = Path(tmp)
        models = {"default": prepare(args.model, work / "default")}
        if not args.no_encoder:
            encoder = encoder_dir(args.model, work / "encoder" / "models")
            models["encoder"] = prepare(encoder, work / "encoder")
        figures = {name: measure(name, entry, texts, args, work) for name, entry in models.items()}
    default = figures["default"]
    record.finish(
        {
            "benchmark": "serve",
            "texts": source,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            **{
                k: default[k]
                for k in ("naive_rps", "batched_rps", "best_backend", "throughput_ratio", "p99_ms")
            },
            "server_over_limit": default["server_over_limit"],
            "models": figures,
        },
        quick=args.quick,
        save=not args.no_save,
    )


if __name__ == "__main__":
    main()
