"""Dynamic micro-batching: texts from concurrent requests are scored together in one forward pass.

Each text waits in an asyncio queue as (token ids, future). One worker task takes the first waiting text,
then collects more until it holds `max_batch` texts or `max_wait_ms` have passed since the first one, pads
them to the longest in the batch, runs `scorer.score` in a thread of its own (the event loop keeps accepting
and tokenizing requests meanwhile) and resolves each text's future with its own score. While a batch is being
scored the next one fills up, so under load batches grow by themselves and the wait rarely matters.

The queue is bounded in texts: a request that does not fit is refused whole (`QueueFull`: the endpoint
answers 503 with Retry-After) instead of letting latency grow without limit. `stop()` refuses new requests
and finishes every text already queued (graceful shutdown).

`Unbatched` has the same interface and scores one request at a time: the naive baseline of the benchmark.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from lm.serving.metrics import Metrics


class QueueFull(Exception):
    """The queue cannot take this request now; retry later."""


class ShuttingDown(QueueFull):
    """The server is stopping and takes no new work."""


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of token ids -> input_ids int64 (B, L) padded with pad_id, attention_mask bool (B, L); L = longest."""
    width = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return ids, mask


@dataclass
class _Item:
    ids: list[int]
    future: asyncio.Future = field(repr=False)


_STOP = object()


class Batcher:
    def __init__(self, scorer, *, pad_id: int, max_batch: int, max_wait_ms: float, max_queue: int,
                 metrics: Metrics | None = None) -> None:
        self.scorer = scorer
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._queue: asyncio.Queue | None = None
        self._pending = 0  # texts queued and not yet taken into a batch
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lm-score")
        self._closing = False

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def depth(self) -> int:
        return self._pending

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="lm-batcher")

    async def score(self, rows: list[list[int]]) -> list[float]:
        """Queue every row (all or none), wait for their scores, in the order given."""
        if self._closing or self._queue is None:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(rows) > self.max_queue:
            raise QueueFull(f"{self._pending} texts already queued (serve.max_queue {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(r, loop.create_future()) for r in rows]
        for item in items:
            self._queue.put_nowait(item)
        self._set_depth(len(items))
        return list(await asyncio.gather(*(i.future for i in items)))

    async def stop(self) -> None:
        """Refuse new requests, score everything already queued, then end the worker."""
        if self._worker is None:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._worker
        self._pool.shutdown(wait=True)

    def _set_depth(self, delta: int) -> None:
        self._pending += delta
        self.metrics.queue_depth.set(self._pending)

    async def _run(self) -> None:
        while True:
            batch, stop = await self._collect()
            if batch:
                self._set_depth(-len(batch))
                await self._score_batch(batch)
            if stop:
                return

    async def _collect(self) -> tuple[list[_Item], bool]:
        """The next batch: the first waiting text plus whatever joins within max_wait, up to max_batch."""
        first = await self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if item is _STOP:
                self._queue.put_nowait(_STOP)  # after this batch, drain the rest, then stop
                break
            batch.append(item)
        return batch, False

    async def _score_batch(self, batch: list[_Item]) -> None:
        live = [i for i in batch if not i.future.done()]  # a client that went away cancelled its future
        if not live:
            return
        ids, mask = pad_rows([i.ids for i in live], self.pad_id)
        self.metrics.batch_size.observe(len(live))
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self._pool, self.scorer.score, ids, mask)
        except Exception as err:  # a failed batch fails its requests, never the worker
            for i in live:
                if not i.future.done():
                    i.future.set_exception(err)
            return
        for i, p in zip(live, np.asarray(probs, dtype=np.float64).tolist()):
            if not i.future.done():
                i.future.set_result(p)


class Unbatched:
    """The naive baseline: each request scored on its own, one request at a time (no batching across requests)."""

    def __init__(self, scorer, *, pad_id: int, max_queue: int, metrics: Metrics | None = None, **_: object) -> None:
        self.scorer = scorer
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

    async def score(self, rows: list[list[int]]) -> list[float]:
        if self._closing or not self._started:
            raise ShuttingDown("the server is shutting down")
        if self._pending + len(rows) > self.max_queue:
            raise QueueFull(f"{self._pending} texts already queued (serve.max_queue {self.max_queue})")
        self._pending += len(rows)
        self.metrics.queue_depth.set(self._pending)
        try:
            async with self._lock:
                ids, mask = pad_rows(rows, self.pad_id)
                self.metrics.batch_size.observe(len(rows))
                probs = await asyncio.get_running_loop().run_in_executor(self._pool, self.scorer.score, ids, mask)
        finally:
            self._pending -= len(rows)
            self.metrics.queue_depth.set(self._pending)
        return np.asarray(probs, dtype=np.float64).tolist()

    async def stop(self) -> None:
        self._closing = True
        if self._lock is not None:
            async with self._lock:  # the request being scored finishes; the ones waiting on the lock follow
                pass
        self._pool.shutdown(wait=True)
