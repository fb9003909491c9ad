"""lm serve: the HTTP contract, in process (httpx over ASGI, lifespan started by hand), on a tiny model
trained through the real stages (download, tokenize, encode, split, train), so tokenization is the real one.

Checked: scores over HTTP equal `lm predict`'s; concurrent shuffled requests of different sizes each get their
own scores (batching never mixes texts up); a full queue answers 503 + Retry-After and the server goes on; bad
bodies get 4xx with a message naming the field; /metrics has the histograms; shutdown answers what was queued.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import tiny_params, write_params

from lm.config import ConfigError, ServeConfig, parse_params
from lm.serving.app import create_app

TEXTS = [
    "you are a wonderful person and I like your comment",
    "this is the stupidest idea I have ever read, idiot",
    "The council meets on Tuesday to discuss the budget.",
    "shut up",
    "I disagree, but thanks for explaining your view so clearly.",
    "what a pathetic loser",
    "ok",
    "Nobody cares about your opinion, go away and never come back here again you fool",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny classifier trained by the pipeline's own stages in a scratch directory."""
    import os

    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize
    import stages.train

    root = tmp_path_factory.mktemp("serve")
    params = parse_params(tiny_params(**{"train.max_steps": 8, "train.threads": 1, "eval.baseline": False}))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in (stages.download, stages.tokenize, stages.encode, stages.split):
            stage.run(params)
        stages.train.run(params)
    finally:
        os.chdir(cwd)
    return root / "models"


class EagerScorer:
    """The exported model scored in eager PyTorch (the interface of lm.serving.backends)."""

    name = "eager"

    def __init__(self, model_dir: Path, delay: float = 0.0):
        from lm.model.export import load_exported

        self.model, _ = load_exported(model_dir)
        self.delay = delay
        self.batches: list[int] = []

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self.batches.append(len(input_ids))
        if self.delay:
            time.sleep(self.delay)
        with torch.inference_mode():
            logits = self.model(torch.as_tensor(input_ids), torch.as_tensor(attention_mask)).logits
            return torch.sigmoid(logits.float()).numpy()


@asynccontextmanager
async def serving(model_dir: Path, scorer=None, **cfg):
    app = create_app(ServeConfig(model_dir=str(model_dir), **cfg), scorer or EagerScorer(model_dir))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lm") as client:
            yield client, app


def run(coro):
    return asyncio.run(coro)


def test_serve_scores_equal_lm_predict(model_dir, one_thread):
    from lm.infer.predict import load_trained

    expected = load_trained(model_dir).predict(TEXTS)

    async def go():
        async with serving(model_dir) as (client, _):
            return await client.post("/v1/score", json={"texts": TEXTS})

    r = run(go())
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"scores", "labels", "threshold"}
    np.testing.assert_allclose(body["scores"], expected["score"], atol=5e-5 + 1e-7)
    assert body["labels"] == expected["label"].tolist()
    assert body["threshold"] == 0.5


def test_serve_health_ready_and_metrics(model_dir, one_thread):
    async def go():
        async with serving(model_dir) as (client, _):
            health, ready = await client.get("/healthz"), await client.get("/readyz")
            await client.post("/v1/score", json={"texts": TEXTS[:3]})
            await client.post("/v1/score", json={"texts": []})
            return health, ready, await client.get("/metrics")

    health, ready, metrics = run(go())
    assert health.status_code == 200 and ready.status_code == 200
    assert ready.json()["status"] == "ready"
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("lm_serve_request_seconds_bucket", "lm_serve_batch_size_bucket", "lm_serve_queue_depth"):
        assert name in text
    assert 'lm_serve_requests_total{endpoint="/v1/score",status="200"} 1.0' in text
    assert 'lm_serve_requests_total{endpoint="/v1/score",status="422"} 1.0' in text
    assert "lm_serve_batch_size_sum 3.0" in text


def test_serve_not_ready_before_startup(model_dir):
    app = create_app(ServeConfig(model_dir=str(model_dir)), EagerScorer(model_dir))

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lm") as client:
            return await client.get("/readyz"), await client.post("/v1/score", json={"texts": ["hi"]})

    ready, score = run(go())
    assert ready.status_code == 503 and score.status_code == 503


def test_serve_batching_never_mixes_up_texts(model_dir, one_thread):
    """Many concurrent requests of 1..7 texts, shuffled: each gets the scores of its own texts, in order."""
    scorer = EagerScorer(model_dir)
    rng = random.Random(0)
    pool = TEXTS + [t.upper() for t in TEXTS] + [t + " " + u for t, u in zip(TEXTS, reversed(TEXTS))]
    with torch.inference_mode():
        alone = {t: scorer.score(*_one(model_dir, t))[0] for t in pool}
    requests = [rng.sample(pool, rng.randint(1, 7)) for _ in range(60)]

    async def go():
        async with serving(model_dir, scorer, max_batch=16, max_wait_ms=2) as (client, _):
            return await asyncio.gather(*(client.post("/v1/score", json={"texts": r}) for r in requests))

    scorer.batches.clear()
    answers = run(go())
    for texts, r in zip(requests, answers):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["scores"], [alone[t] for t in texts], atol=1e-5)
    assert max(scorer.batches) > 7  # texts of different requests were scored together
    assert max(scorer.batches) <= 16


def _one(model_dir: Path, text: str):
    from lm.infer.predict import load_trained

    ids, mask = load_trained(model_dir)._rows([text], set())
    return ids.numpy(), mask.numpy()


def test_serve_overload_gives_503_and_stays_up(model_dir, one_thread):
    scorer = EagerScorer(model_dir, delay=0.05)

    async def go():
        async with serving(model_dir, scorer, max_queue=4, max_batch=2, max_wait_ms=0) as (client, _):
            burst = await asyncio.gather(
                *(client.post("/v1/score", json={"texts": TEXTS[:2]}) for _ in range(12))
            )
            after = await client.post("/v1/score", json={"texts": TEXTS[:2]})
            return burst, after, await client.get("/healthz")

    burst, after, health = run(go())
    codes = [r.status_code for r in burst]
    assert 503 in codes and 200 in codes
    refused = next(r for r in burst if r.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "max_queue" in refused.json()["error"]
    assert after.status_code == 200 and health.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 422, "not valid JSON"),
        (b'["a"]', 422, "texts: required"),
        (b'{"text": ["a"]}', 422, "texts: required"),
        (b'{"texts": "a"}', 422, "texts: expected a list"),
        (b'{"texts": []}', 422, "texts: empty list"),
        (b'{"texts": ["ok", 3]}', 422, "texts[1]: expected a string"),
        (b'{"texts": ["ok", ""]}', 422, "texts[1]: empty string"),
        (b'{"texts": ["ok"], "x": 1}', 422, "x: unknown field"),
        (b'{"texts": ["a", "b", "c", "d"]}', 422, "max_texts"),
        (b'{"texts": ["' + b"a" * 101 + b'"]}', 422, "texts[0]: 101 characters"),
        (b'{"texts": ["' + b"a" * 300 + b'"]}', 413, "max_body_bytes"),
    ],
)
def test_serve_bad_bodies_get_4xx_with_a_message(model_dir, one_thread, body, status, words):
    async def go():
        async with serving(model_dir, max_texts=3, max_chars=100, max_body_bytes=200) as (client, _):
            bad = await client.post("/v1/score", content=body, headers={"content-type": "application/json"})
            return bad, await client.post("/v1/score", json={"texts": ["still up"]})

    bad, good = run(go())
    assert bad.status_code == status
    assert words in bad.json()["error"]
    assert good.status_code == 200


def test_serve_scorer_failure_is_a_500_not_a_dead_worker(model_dir, one_thread):
    class Flaky(EagerScorer):
        def score(self, input_ids, attention_mask):
            if len(self.batches) == 0:
                self.batches.append(0)
                raise RuntimeError("boom")
            return super().score(input_ids, attention_mask)

    async def go():
        async with serving(model_dir, Flaky(model_dir)) as (client, _):
            return await client.post("/v1/score", json={"texts": ["a"]}), await client.post(
                "/v1/score", json={"texts": ["a"]}
            )

    first, second = run(go())
    assert first.status_code == 500 and "boom" in first.json()["error"]
    assert second.status_code == 200


class GatedScorer(EagerScorer):
    """Holds its first batch until `gate` is set: the test decides when scoring may go on."""

    def __init__(self, model_dir: Path):
        super().__init__(model_dir)
        self.gate = threading.Event()

    def score(self, input_ids, attention_mask):
        self.gate.wait(60)
        return super().score(input_ids, attention_mask)


@pytest.mark.parametrize("naive", [False, True])
def test_serve_graceful_shutdown_answers_queued_requests(model_dir, one_thread, naive):
    """Requests queued when shutdown starts are all scored; requests after it get 503."""
    scorer = GatedScorer(model_dir)
    app = create_app(ServeConfig(model_dir=str(model_dir), max_batch=2, max_wait_ms=0), scorer, naive=naive)
    # queued = every text accepted and not finished (naive) / not yet taken into a batch (the first batch of 2
    # is held in the scorer)
    queued = len(TEXTS) if naive else len(TEXTS) - 2

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lm") as client:
            async with app.router.lifespan_context(app):
                pending = [asyncio.create_task(client.post("/v1/score", json={"texts": [t]})) for t in TEXTS]
                while (
                    app.state.served.batcher.depth < queued
                ):  # every request in, whatever the machine's load
                    await asyncio.sleep(0.001)
                asyncio.get_running_loop().call_later(
                    0.05, scorer.gate.set
                )  # scoring goes on during shutdown
            late = await client.post("/v1/score", json={"texts": ["late"]})
            return await asyncio.gather(*pending), late

    answers, late = run(go())
    assert [r.status_code for r in answers] == [200] * len(TEXTS)
    assert late.status_code == 503
    assert sum(scorer.batches) == len(TEXTS)


def test_serve_naive_scores_one_request_at_a_time(model_dir, one_thread):
    scorer = EagerScorer(model_dir)
    app = create_app(ServeConfig(model_dir=str(model_dir)), scorer, naive=True)

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lm") as client:
                return await asyncio.gather(
                    *(client.post("/v1/score", json={"texts": TEXTS[:3]}) for _ in range(6))
                )

    answers = run(go())
    assert all(r.status_code == 200 for r in answers)
    assert scorer.batches == [3] * 6
    assert len({tuple(r.json()["scores"]) for r in answers}) == 1


def test_serve_score_rows_sorts_and_chunks_but_answers_in_order(model_dir, one_thread):
    """score_rows scores by length in chunks: the same scores as each row scored alone, in the given order."""
    from lm.serving.batcher import score_rows

    scorer = EagerScorer(model_dir)
    rows = [list(_one(model_dir, t)[0][0]) for t in TEXTS]
    alone = [scorer.score(*_one(model_dir, t))[0] for t in TEXTS]
    scorer.batches.clear()
    np.testing.assert_allclose(score_rows(scorer, rows, pad_id=0, chunk=3), alone, atol=1e-5)
    assert scorer.batches == [3, 3, 2]
    with ThreadPoolExecutor(2) as pool:  # serve.score_threads: chunks side by side, scores still in order
        np.testing.assert_allclose(score_rows(scorer, rows, pad_id=0, chunk=2, pool=pool), alone, atol=1e-5)


def test_serve_lone_request_is_not_held_back_but_a_busy_one_waits_for_company(model_dir, one_thread):
    """A request with nothing arriving before it is scored at once (max_wait_ms would cost a quiet server its
    latency); requests that follow each other within max_wait_ms wait and share a batch."""
    from lm.serving.batcher import Batcher
    from lm.tokenizer import Tokenizer

    scorer = EagerScorer(model_dir)
    tok = Tokenizer.load(model_dir / "tokenizer")

    def encode(texts):
        return [[tok.cls_id] + tok.encode(t, allowed_special=set(), disallowed="as_text") for t in texts]

    async def go():
        batcher = Batcher(scorer, encode, pad_id=tok.pad_id, max_batch=2, max_wait_ms=60_000, max_queue=8)
        await batcher.start()
        alone = await asyncio.wait_for(batcher.score(["a lone request"]), 30)  # not the 60 s wait
        pair = await asyncio.wait_for(asyncio.gather(batcher.score(["second"]), batcher.score(["third"])), 30)
        await batcher.stop()
        return alone, pair

    alone, pair = run(go())
    assert scorer.batches == [1, 2] and len(alone) == 1 and [len(p) for p in pair] == [1, 1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_serve_on_a_gpu_the_machine_lacks_is_one_line_before_the_server_starts(model_dir, tmp_path):
    from typer.testing import CliRunner

    from lm.cli import app

    write_params(tmp_path / "params.yaml", {"serve": {"device": "cuda"}})
    result = CliRunner().invoke(
        app, ["serve", "--params", str(tmp_path / "params.yaml"), "--model", str(model_dir)]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "serve.device=cuda" in lines[0] and "serve.device: cpu" in lines[0], (
        result.output
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_serve_scores_on_the_gpu_as_on_the_cpu(model_dir):
    from lm.serving.backends import load_scorer

    rng = np.random.default_rng(0)
    ids = rng.integers(4, 60, (5, 12)).astype(np.int64)
    mask = np.arange(12)[None, :] < rng.integers(1, 13, 5)[:, None]
    cpu = load_scorer(model_dir, "eager").score(ids, mask)
    np.testing.assert_allclose(
        load_scorer(model_dir, "eager", device="cuda").score(ids, mask), cpu, atol=1e-4
    )


def test_serve_a_missing_artifact_is_one_line_before_the_server_starts(model_dir, tmp_path):
    """`lm serve --backend onnx-int8` without `lm export`'s artifacts: one line naming the file and the fix,
    exit 1, no startup traceback."""
    from typer.testing import CliRunner

    from lm.cli import app

    result = CliRunner().invoke(
        app,
        [
            "serve",
            "--backend",
            "onnx-int8",
            "--model",
            str(model_dir),
            "--export-dir",
            str(tmp_path / "none"),
        ],
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.int8.onnx not found" in lines[0] and "lm export" in lines[0], (
        result.output
    )


def test_predict_file_keeps_the_id_column_and_leaves_empty_texts_unscored_as_serve_does(model_dir, tmp_path):
    """`lm predict -f table -o out.csv`: one output row per input row with the table's id first; an empty text
    is not scored (the server answers 422 for it), its row kept with no score and no label."""
    import pandas as pd
    from typer.testing import CliRunner

    from lm.cli import app
    from lm.infer.predict import load_trained

    table = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a7", "b8", "c9"], "text": [TEXTS[0], "", TEXTS[1]]}).to_csv(table, index=False)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["predict", "-f", str(table), "--model", str(model_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out, dtype={"id": str}, keep_default_na=False)
    assert list(got.columns) == ["id", "text", "score", "label"] and got["id"].tolist() == ["a7", "b8", "c9"]
    assert got.loc[1, "score"] == "" and got.loc[1, "label"] == ""
    expected = load_trained(model_dir).predict([TEXTS[0], TEXTS[1]])["score"].tolist()
    assert [float(got.loc[0, "score"]), float(got.loc[2, "score"])] == expected

    async def empty():
        async with serving(model_dir) as (client, _):
            return await client.post("/v1/score", json={"texts": [""]})

    assert run(empty()).status_code == 422


def test_class_names_come_from_the_params_in_every_output(tmp_path, monkeypatch, one_thread):
    """A classifier of other data (`data.label_names: [fresh, rotten]`) is reported with those names by lm
    predict, lm serve, the confusion plot and the prediction table; none of its outputs says "toxic"."""
    import pandas as pd

    import stages.download
    import stages.encode
    import stages.evaluate
    import stages.split
    import stages.tokenize
    import stages.train
    import stages.visualize
    from lm.data.synthetic import generate_corpus
    from lm.infer.predict import load_trained

    reviews = generate_corpus(300, seed=0, identities=[])[["text", "target"]]
    reviews.to_csv(tmp_path / "reviews.csv", index=False)
    monkeypatch.chdir(tmp_path)
    params = parse_params(
        tiny_params(
            **{
                "data.source": "reviews.csv",
                "data.identity_columns": [],
                "data.label_names": ["fresh", "rotten"],
                "train.max_steps": 6,
                "train.threads": 1,
                "eval.baseline": False,
                "viz.n_examples": 1,
            }
        )
    )
    for stage in (
        stages.download,
        stages.tokenize,
        stages.encode,
        stages.split,
        stages.train,
        stages.evaluate,
        stages.visualize,
    ):
        stage.run(params)

    texts = ["a fine film", "the worst", "ok"]
    table = load_trained(Path("models")).predict(texts)
    assert set(table["label"]) <= {"fresh", "rotten"} and list(table.columns) == ["text", "score", "label"]
    labels = [("rotten" if s >= 0.5 else "fresh") for s in table["score"]]
    assert table["label"].tolist() == labels

    async def go():
        async with serving(Path("models")) as (client, _):
            return await client.post("/v1/score", json={"texts": texts})

    body = run(go()).json()
    assert body["labels"] == labels
    confusion = json.loads(Path("reports/plots/confusion.json").read_text())
    assert {row["actual"] for row in confusion} <= {"fresh", "rotten"}
    outputs = [
        Path("reports/predictions.md").read_text(),
        Path("reports/plots/confusion.json").read_text(),
        json.dumps(body),
        table.to_csv(),
    ]
    assert not any("toxic" in text for text in outputs)
    assert parse_params(tiny_params(**{"data.source": "reviews.csv"})).data.label_names == [
        "negative",
        "positive",
    ]
    assert parse_params(tiny_params()).data.label_names == ["non-toxic", "toxic"]
    with pytest.raises(ConfigError, match="data.label_names"):
        parse_params(tiny_params(**{"data.label_names": ["same", "same"]}))
    pd.testing.assert_frame_equal(table, load_trained(Path("models")).predict(texts))  # deterministic
