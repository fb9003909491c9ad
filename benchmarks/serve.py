"""Load test of `lm serve`: the naive server (one request scored at a time) against dynamic micro-batching.

    python benchmarks/serve.py            # up to 15 s / 3000 requests per cell
    python benchmarks/serve.py --quick    # up to 4 s / 600 requests per cell

Each row starts `lm serve` as a subprocess on 127.0.0.1 (a free port) with the model in --model (default
models/), waits for /readyz, and drives POST /v1/score with an async HTTP client (aiohttp, else httpx) at
concurrency 1, 16 and 64: that many clients, each sending one comment per request as soon as its previous
answer came back, until the cell's request or time budget is spent (after a short warm-up). Rows: naive
(eager, `--naive`), batched eager, and batched with each exported backend found in --export-dir (serving/,
written by `lm export`). The texts are real comments (../shared/data/civil_comments/toxic_spans_comments.csv,
comment_text) when present, else the embedded synthetic corpus. The client runs on the same machine as the
server and shares its cores.

Prints requests/s and p50/p95/p99 latency per row; the last line is one JSON object with naive_rps and
batched_rps (concurrency 64), throughput_ratio (best batched / naive at 64) and p99_ms (best batched at 64),
also written to benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record

REPO = Path(__file__).resolve().parents[1]
COMMENTS = REPO.parent / "shared" / "data" / "civil_comments" / "toxic_spans_comments.csv"
CONCURRENCY = (1, 16, 64)
EXPORTED = {"int8": "model.int8.pt", "torchscript": "model.torchscript.pt"}


def load_texts(n: int = 2000) -> tuple[list[str], str]:
    if COMMENTS.exists():
        with COMMENTS.open(newline="", encoding="utf-8") as f:
            texts = [row["comment_text"][:2000] for row in csv.DictReader(f) if row["comment_text"].strip()]
        return texts[:n], str(COMMENTS.relative_to(REPO.parent))
    from lm.data.synthetic import generate_corpus

    return generate_corpus(n, seed=0, identities=[])["text"].tolist(), "embedded synthetic corpus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        "-m",
        "lm.cli",
        "serve",
        "--params",
        str(args.params),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        str(args.model),
        *extra,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


async def drive(url: str, texts: list[str], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """`concurrency` closed-loop clients over keep-alive connections; latencies of the answers 200. The client
    shares the server's cores, so it should cost as little CPU as possible: aiohttp when installed (batched
    torchscript at concurrency 16 went from ~460 to ~690-830 req/s with it), else httpx with one AsyncClient
    per connection."""
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


def rows_to_run(args) -> list[tuple[str, list[str]]]:
    batching = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    rows = [("naive eager", ["--naive"]), ("batched eager", batching)]
    for backend, artifact in EXPORTED.items():
        if (args.export_dir / artifact).exists():
            rows.append(
                (
                    f"batched {backend}",
                    [*batching, "--backend", backend, "--export-dir", str(args.export_dir)],
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="up to 4 s / 600 requests per cell")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", type=Path, default=Path("models"))
    ap.add_argument("--export-dir", type=Path, default=Path("serving"))
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    record.add_save_arg(ap)
    args = ap.parse_args()
    max_requests, max_seconds = (600, 4.0) if args.quick else (3000, 15.0)
    texts, source = load_texts()
    results: dict[str, list[dict]] = {}
    print(f"{'server':<18} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, extra in rows_to_run(args):
        port = free_port()
        proc = start_server(args, port, extra)
        try:
            for c in CONCURRENCY:
                cell = asyncio.run(drive(f"http://127.0.0.1:{port}", texts, c, max_requests, max_seconds))
                results.setdefault(name, []).append(cell)
                print(
                    f"{name:<18} {c:>4} {cell['rps']:>8} {cell['p50_ms']:>8} {cell['p95_ms']:>8} "
                    f"{cell['p99_ms']:>8} {cell['errors']:>6}",
                    flush=True,
                )
        finally:
            stop_server(proc)
    at64 = {name: cells[-1] for name, cells in results.items()}
    best = max((n for n in at64 if n != "naive eager"), key=lambda n: at64[n]["rps"])
    naive_rps = at64["naive eager"]["rps"]
    record.finish(
        {
            "benchmark": "serve",
            "texts": source,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "naive_rps": naive_rps,
            "batched_rps": at64[best]["rps"],
            "best_backend": best,
            "throughput_ratio": round(at64[best]["rps"] / naive_rps, 2),
            "p99_ms": at64[best]["p99_ms"],
            "rows": results,
        },
        quick=args.quick,
        save=not args.no_save,
    )


if __name__ == "__main__":
    main()
