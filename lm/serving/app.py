"""The service: Starlette on uvicorn, one model per process, dynamic micro-batching in front of it.

    POST /v1/score     classify: {"texts": [...]} -> {"scores": [...], "labels": [...], "threshold": t}
    POST /v1/generate  clm: {"prompts": [...], sampling options} -> continuations
    POST /v1/fill      mlm: {"texts": [... <|mask|> ...], "top_k": k} -> candidates per mask
    GET  /healthz      the process answers;  GET /readyz  the model is loaded (200), else 503
    GET  /metrics      Prometheus text (lm.serving.metrics)

Starlette rather than FastAPI: we check bodies ourselves (to name the wrong field) and need none of FastAPI's
per-request machinery, which costs more event-loop time than scoring a short text. A request is checked before
any work (413 for size, 422 naming the field), then queued for the batcher (full: 503 + Retry-After), which
tokenizes and scores in its own thread, so the event loop never waits on either. The process holds nothing but
the model, so it scales out as uvicorn workers (`uvicorn --factory lm.serving.app:from_params --workers N`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lm.config import ServeConfig
from lm.errors import LmError
from lm.labels import TOXICITY_NAMES, decision_of, labels_of
from lm.serving.batcher import Batcher, QueueFull, Unbatched
from lm.serving.metrics import Metrics
from lm.tokenizer import classifier_rows

ENDPOINTS = ("/v1/score", "/v1/generate", "/v1/fill", "/healthz", "/readyz", "/metrics")
TASK_ENDPOINT = {"classify": "/v1/score", "clm": "/v1/generate", "mlm": "/v1/fill"}
RETRY_AFTER_S = 1


class RequestError(Exception):
    """A bad request, answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Served:
    """Everything one app instance holds: the model, its tokenizer, the batcher and the pools."""

    cfg: ServeConfig
    naive: bool
    metrics: Metrics
    scorer: Any = None
    tokenizer: Any = None
    max_len: int | None = None
    threshold: float | None = None
    label_names: list[str] = field(default_factory=lambda: list(TOXICITY_NAMES))
    batcher: Batcher | Unbatched | None = None
    loaded: bool = False
    task: str = "classify"
    trained: Any = None  # clm / mlm: lm.infer.predict.Trained
    pool: ThreadPoolExecutor | None = None  # clm / mlm: the one thread that generates / fills
    defaults: dict[str, Any] = field(default_factory=dict)  # clm: sampling options from params.yaml viz:

    def encode(self, texts: list[str]) -> list[list[int]]:
        """As `lm predict` (lm.infer.predict.Trained._rows) encodes for a classifier; runs in the scoring
        thread."""
        return classifier_rows(self.tokenizer, texts, self.max_len)


def load_model(served: Served) -> None:
    """Fill in what the app was not given: the scorer (serve.backend), the tokenizer, max_len and threshold
    from serve.model_dir/config.json. Runs once per process, in the lifespan."""
    import torch

    from lm.model.export import read_export_config

    torch.set_num_threads(served.cfg.threads)
    model_dir = Path(served.cfg.model_dir)
    config = read_export_config(model_dir)
    served.task = config["task"]
    if served.task != "classify":
        from lm.infer.predict import load_trained

        if served.cfg.backend != "eager":
            raise LmError(
                f"serve.backend {served.cfg.backend}: exported artifacts are classifiers only; serve a "
                f"{served.task} model with backend eager"
            )
        served.trained = served.trained or load_trained(model_dir)
        served.tokenizer = served.trained.tokenizer
        served.max_len = int(config["max_len"])
        return
    if served.scorer is None:
        from lm.serving.backends import load_scorer

        served.scorer = load_scorer(
            model_dir,
            served.cfg.backend,
            Path(served.cfg.export_dir),
            threads=served.cfg.threads,
            device=served.cfg.device,
        )
    if served.tokenizer is None:
        from lm.tokenizer import load_tokenizer

        served.tokenizer = load_tokenizer(model_dir / "tokenizer")
    served.max_len = served.max_len or int(config["max_len"])
    threshold, served.label_names = decision_of(config)
    served.threshold = threshold if served.threshold is None else served.threshold


def _make_batcher(served: Served) -> Batcher | Unbatched:
    cfg = served.cfg
    kind = Unbatched if served.naive else Batcher
    return kind(
        served.scorer,
        served.encode,
        pad_id=served.tokenizer.pad_id,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        chunk=cfg.score_chunk,
        threads=cfg.score_threads,
        metrics=served.metrics,
    )


def _lifespan(served: Served):
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(load_model, served)
        gc.collect()
        # the model and libraries are never garbage: keep the collector from rescanning them mid-request
        gc.freeze()
        if served.task == "classify":
            served.batcher = _make_batcher(served)
            await served.batcher.start()
        else:
            served.pool = ThreadPoolExecutor(1, thread_name_prefix=f"lm-{served.task}")
        served.loaded = True
        try:
            yield
        finally:
            served.loaded = False
            if served.batcher is not None:
                await served.batcher.stop()  # finishes every queued text before the process ends
            if served.pool is not None:
                await asyncio.to_thread(served.pool.shutdown, wait=True)

    return lifespan


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared Content-Length) passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: {declared} bytes, more than serve.max_body_bytes ({limit})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: more than serve.max_body_bytes ({limit}) bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_texts(
    body: bytes, cfg: ServeConfig, key: str = "texts", options: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, Any]]:
    """{key: [...], option: value, ...} -> (the texts, the options given), or RequestError(422) naming the
    key that is wrong."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(422, f'body: not valid JSON; send {{"{key}": ["...", ...]}}') from None
    if not isinstance(payload, dict) or key not in payload:
        raise RequestError(422, f'{key}: required; send {{"{key}": ["...", ...]}}')
    unknown = sorted(set(payload) - {key, *options})
    if unknown:
        accepted = ", ".join((key, *options))
        raise RequestError(422, f"{unknown[0]}: unknown field; accepted: {accepted}")
    texts = payload[key]
    if not isinstance(texts, list):
        raise RequestError(422, f"{key}: expected a list of strings, got {type(texts).__name__}")
    if not texts:
        raise RequestError(422, f"{key}: empty list; send 1 to {cfg.max_texts} texts")
    if len(texts) > cfg.max_texts:
        raise RequestError(422, f"{key}: {len(texts)} texts, more than serve.max_texts ({cfg.max_texts})")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(422, f"{key}[{i}]: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise RequestError(422, f"{key}[{i}]: empty string")
        if len(text) > cfg.max_chars:
            raise RequestError(
                422, f"{key}[{i}]: {len(text)} characters, more than serve.max_chars ({cfg.max_chars})"
            )
    return texts, {k: v for k, v in payload.items() if k != key}


async def score_texts(served: Served, texts: list[str]) -> dict[str, Any]:
    try:
        scores = await served.batcher.score(texts)
    except QueueFull as err:
        raise RequestError(503, f"overloaded: {err}; retry in {RETRY_AFTER_S} s") from None
    t = served.threshold
    return {"scores": scores, "labels": labels_of(scores, t, served.label_names), "threshold": t}


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _routes(served: Served) -> list[Route]:
    async def score(request: Request) -> Response:
        if not served.loaded:
            return _error(503, "not ready: the model is loading or the server is stopping")
        try:
            if served.task != "classify":
                return _error(
                    404,
                    f"/v1/score serves classifiers; this is a {served.task} model: use POST "
                    f"{TASK_ENDPOINT[served.task]}",
                )
            texts, _ = parse_texts(await read_body(request, served.cfg.max_body_bytes), served.cfg)
            return JSONResponse(await score_texts(served, texts))
        except RequestError as err:
            return _error(err.status, str(err))
        except Exception as err:  # a scorer failure fails this request, never the process
            return _error(500, f"scoring failed: {type(err).__name__}: {err}")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if served.loaded and served.task != "classify":
            return JSONResponse(
                {"status": "ready", "task": served.task, "endpoint": TASK_ENDPOINT[served.task]}
            )
        if served.loaded and served.batcher is not None and served.batcher.running:
            return JSONResponse(
                {
                    "status": "ready",
                    "backend": getattr(served.scorer, "name", "?"),
                    "batching": not served.naive,
                }
            )
        return _error(503, "not ready: the model is loading or the server is stopping")

    async def metrics(request: Request) -> Response:
        return Response(served.metrics.render(), media_type=served.metrics.content_type)

    async def generate(request: Request) -> Response:
        return await _language(served, request, "clm")

    async def fill(request: Request) -> Response:
        return await _language(served, request, "mlm")

    return [
        Route("/v1/score", score, methods=["POST"]),
        Route("/v1/generate", generate, methods=["POST"]),
        Route("/v1/fill", fill, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]


async def _language(served: Served, request: Request, task: str) -> Response:
    """POST /v1/generate (clm) and /v1/fill (mlm): lm.serving.language, in the language worker thread."""
    from lm.serving import language

    if not served.loaded:
        return _error(503, "not ready: the model is loading or the server is stopping")
    if served.task != task:
        return _error(
            404,
            f"{TASK_ENDPOINT[task]} needs a {task} model; this is a {served.task} model: use POST "
            f"{TASK_ENDPOINT[served.task]}",
        )
    kind, key = (language.GenerateOptions, "prompts") if task == "clm" else (language.FillOptions, "texts")
    try:
        texts, given = parse_texts(
            await read_body(request, served.cfg.max_body_bytes), served.cfg, key, tuple(kind.model_fields)
        )
        opts = language.options(kind, given, served.defaults if task == "clm" else {})
        if task == "clm" and opts.max_new_tokens > served.cfg.max_new_tokens:
            raise ValueError(
                f"max_new_tokens: {opts.max_new_tokens}, more than serve.max_new_tokens "
                f"({served.cfg.max_new_tokens})"
            )
        if task == "mlm":
            language.check_masks(texts, served.tokenizer.mask_token)
    except RequestError as err:
        return _error(err.status, str(err))
    except ValueError as err:
        return _error(422, str(err))
    work = language.generate if task == "clm" else language.fill
    try:
        answer = await asyncio.get_running_loop().run_in_executor(
            served.pool, work, served.trained, texts, opts
        )
    except Exception as err:  # a failed request fails alone, never the process
        return _error(500, f"{task} failed: {type(err).__name__}: {err}")
    return JSONResponse(answer)


class Measured:
    """ASGI middleware: every HTTP request's status and latency into the Prometheus metrics."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            self.metrics.observe(path if path in ENDPOINTS else "other", status, time.perf_counter() - start)


def create_app(
    cfg: ServeConfig,
    scorer: Any = None,
    tokenizer: Any = None,
    *,
    max_len: int | None = None,
    threshold: float | None = None,
    naive: bool = False,
    defaults: dict[str, Any] | None = None,
) -> Starlette:
    """The service. What is not passed in (scorer, tokenizer, max_len, threshold) is loaded from cfg.model_dir
    (and cfg.backend / cfg.export_dir) when the app starts. naive: one request scored at a time, no batching.
    defaults: a decoder's sampling options (temperature, top_k, top_p, max_new_tokens) when a request omits
    them."""
    served = Served(
        cfg=cfg,
        naive=naive,
        metrics=Metrics(),
        scorer=scorer,
        tokenizer=tokenizer,
        max_len=max_len,
        threshold=threshold,
        defaults=dict(defaults or {}),
    )
    app = Starlette(routes=_routes(served), lifespan=_lifespan(served))
    app.add_middleware(Measured, metrics=served.metrics)
    app.state.served = served
    return app


def from_params() -> Starlette:
    """App factory for `uvicorn --factory lm.serving.app:from_params` (several workers): params from
    $LM_PARAMS (default params.yaml), naive mode from $LM_SERVE_NAIVE=1."""
    from lm.config import load_params

    params = load_params(os.environ.get("LM_PARAMS", "params.yaml"))
    return create_app(
        params.serve, naive=os.environ.get("LM_SERVE_NAIVE") == "1", defaults=sampling_defaults(params)
    )


def sampling_defaults(params) -> dict[str, Any]:
    """A decoder's sampling options when a /v1/generate request omits them: the viz section's (what the
    pipeline's own samples use)."""
    v = params.viz
    return {
        "max_new_tokens": v.max_new_tokens,
        "temperature": v.temperature,
        "top_k": v.top_k,
        "top_p": v.top_p,
    }
