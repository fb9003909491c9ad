"""Dynamic micro-batching: texts from concurrent requests are scored together.

A request waits in a queue as (texts, future). One worker task waits until `max_batch` texts are queued or the
oldest request has waited `max_wait_ms` (only under load: a request with no other arriving within max_wait_ms
before it is scored at once, so a quiet server answers as fast as an unbatched one), takes whole requests up
to `max_batch` texts (a larger request alone) and hands them to the scoring thread, which tokenizes them,
sorts them by length, scores them in chunks of `chunk` rows (on `threads` threads) padded to the longest in
the chunk, and puts every score back in its request's order. The event loop only parses, queues and answers:
tokenization and the model run off it, in one thread, so the next batch fills up while one is scored and under
load batches grow by themselves.

Why chunks inside a batch: on a CPU a forward pass over a few rows keeps its activations in cache, a large
batch at once does not (benchmarks/serve.py measures the chunk size). Sorting by length first keeps each
chunk's padding small.

The queue is bounded in texts: a request that does not fit is refused whole (`QueueFull`: the endpoint answers
503 with Retry-After) instead of letting latency grow without limit. `stop()` refuses new requests and
finishes every request already queued (graceful shutdown).

`Unbatched` has the same interface and scores one request at a time: the naive baseline of the benchmark.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lm.serving.metrics import Metrics

Encode = Callable[[list[str]], list[list[int]]]


class QueueFull(Exception):
    """The queue cannot take this request now; retry later."""


class ShuttingDown(QueueFull):
    """The server is stopping and takes no new work."""


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids -> input_ids int64 (B, L) padded with pad_id, attention_mask bool (B, L);
    L = longest."""
    width = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return ids, mask


def score_rows(
    scorer, rows: list[list[int]], pad_id: int, chunk: int, pool: ThreadPoolExecutor | None = None
) -> np.ndarray:
    """Scores of `rows` in their order: scored shortest first, `chunk` rows per forward pass; the chunks on
    `pool`'s threads when given (torch releases the GIL inside its kernels, so chunks run on several
    cores)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    parts = [order[start : start + chunk] for start in range(0, len(order), chunk)]

    def one(part: list[int]) -> np.ndarray:
        return np.asarray(scorer.score(*pad_rows([rows[i] for i in part], pad_id)), dtype=np.float64)

    scores = np.empty(len(rows), dtype=np.float64)
    for part, part_scores in zip(parts, pool.map(one, parts) if pool and len(parts) > 1 else map(one, parts)):
        scores[part] = part_scores
    return scores


@dataclass
class _Request:
    texts: list[str]
    future: asyncio.Future = field(repr=False)
    arrival: float
    wait: float  # how long it may wait for others: max_wait under load, 0 when requests come one at a time


_STOP = object()


class Batcher:
    def __init__(
        self,
        scorer,
        encode: Encode,
        *,
        pad_id: int,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        chunk: int = 16,
        threads: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self.scorer = scorer
        self.encode = encode
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.chunk = chunk
        self.metrics = metrics or Metrics()
        self._waiting: deque[_Request] = deque()
        self._last_arrival = float("-inf")
        self._pending = 0  # texts queued and not yet taken into a batch
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lm-score")
        self._chunk_pool = ThreadPoolExecutor(threads, thread_name_prefix="lm-chunk") if threads > 1 else None
        self._closing = False

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def depth(self) -> int:
        return self._pending

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="lm-batcher")

    async def score(self, texts: list[str]) -> list[float]:
        """Queue the request's texts (all or none) and wait for their scores, in the order given."""
        if self._closing or self._wake is None:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(texts) > self.max_queue:
            raise QueueFull(f"{self._pending} texts already queued (serve.max_queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        now = loop.time()
        # Waiting pays only when others are coming: a request that follows another within max_wait may wait
        # for more; a lone request (nothing arrived within max_wait before it) is scored at once.
        wait = self.max_wait if now - self._last_arrival < self.max_wait else 0.0
        self._last_arrival = now
        request = _Request(texts, loop.create_future(), now, wait)
        self._waiting.append(request)
        self._set_depth(len(texts))
        self._wake.set()
        return await request.future

    async def stop(self) -> None:
        """Refuse new requests, score everything already queued, then end the worker."""
        if self._worker is None:
            return
        self._closing = True
        self._wake.set()
        await self._worker
        self._pool.shutdown(wait=True)
        if self._chunk_pool is not None:
            self._chunk_pool.shutdown(wait=True)

    def _set_depth(self, delta: int) -> None:
        self._pending += delta
        self.metrics.queue_depth.set(self._pending)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self._waiting[0]
            await self._fill(loop, first.arrival + first.wait)
            batch = self._take()
            await self._score(loop, batch)

    async def _fill(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Wait until max_batch texts are queued, the oldest request's deadline passes, or shutdown begins."""
        while self._pending < self.max_batch and not self._closing:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[_Request]:
        """Whole requests, oldest first, up to max_batch texts (at least one request, however large)."""
        batch = [self._waiting.popleft()]
        size = len(batch[0].texts)
        while self._waiting and size + len(self._waiting[0].texts) <= self.max_batch:
            batch.append(self._waiting.popleft())
            size += len(batch[-1].texts)
        self._set_depth(-size)
        return batch

    def _score_texts(self, texts: list[str]) -> np.ndarray:
        """In the scoring thread: tokenize, then score by length in chunks."""
        return score_rows(self.scorer, self.encode(texts), self.pad_id, self.chunk, self._chunk_pool)

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        live = [r for r in batch if not r.future.done()]  # a client that went away cancelled its future
        if not live:
            return
        texts = [t for r in live for t in r.texts]
        self.metrics.batch_size.observe(len(texts))
        try:
            scores = (await loop.run_in_executor(self._pool, self._score_texts, texts)).tolist()
        except Exception as err:  # a failed batch fails its requests, never the worker
            for r in live:
                if not r.future.done():
                    r.future.set_exception(err)
            return
        start = 0
        for r in live:
            if not r.future.done():
                r.future.set_result(scores[start : start + len(r.texts)])
            start += len(r.texts)


class Unbatched:
    """The naive baseline: each request scored on its own, one request at a time (no batching across
    requests)."""

    def __init__(
        self,
        scorer,
        encode: Encode,
        *,
        pad_id: int,
        max_queue: int,
        metrics: Metrics | None = None,
        **_: object,
    ) -> None:
        self.scorer = scorer
        self.encode = encode
        self.pad_id = pad_id
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._lock: asyncio.Lock | None = None
        self._pending = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lm-score")
        self._started = False
        self._closing = False

    @property
    def running(self) -> bool:
        return self._started and not self._closing

    @property
    def depth(self) -> int:
        return self._pending

    async def start(self) -> None:
        self._lock = asyncio.Lock()
        self._started, self._closing = True, False

    def _score_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.scorer.score(*pad_rows(self.encode(texts), self.pad_id)), dtype=np.float64)

    async def score(self, texts: list[str]) -> list[float]:
        if self._closing or not self._started:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(texts) > self.max_queue:
            raise QueueFull(f"{self._pending} texts already queued (serve.max_queue {self.max_queue})")
        self._pending += len(texts)
        self.metrics.queue_depth.set(self._pending)
        try:
            async with self._lock:
                self.metrics.batch_size.observe(len(texts))
                scores = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._score_texts, texts
                )
        finally:
            self._pending -= len(texts)
            self.metrics.queue_depth.set(self._pending)
        return scores.tolist()

    async def stop(self) -> None:
        self._closing = True
        if self._lock is not None:
            async with self._lock:  # the request being scored finishes; the ones waiting on the lock follow
                pass
        self._pool.shutdown(wait=True)
