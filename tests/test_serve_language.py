"""`lm serve` with a language model: a decoder answers POST /v1/generate, a masked LM POST /v1/fill, with the
same answers as `lm generate` / `lm predict` and 4xx for what they cannot do."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from conftest import tiny_params

from lm.config import ServeConfig, parse_params
from lm.serving.app import create_app


def _train(root: Path, task: str) -> Path:
    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize
    import stages.train

    params = parse_params(
        tiny_params(**{"task": task, "train.max_steps": 6, "train.threads": 1, "eval.baseline": False})
    )
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in (stages.download, stages.tokenize, stages.encode, stages.split, stages.train):
            stage.run(params)
    finally:
        os.chdir(cwd)
    return root / "models"


@pytest.fixture(scope="module")
def clm_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("serve-clm"), "clm")


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("serve-mlm"), "mlm")


async def _calls(app, *calls):
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://lm") as client:
            return [await client.request(method, path, json=body) for method, path, body in calls]


def _app(model_dir: Path, **cfg):
    return create_app(
        ServeConfig(model_dir=str(model_dir), **cfg),
        defaults={"max_new_tokens": 5, "temperature": 0.8, "top_k": 40, "top_p": 0.95},
    )


def test_serve_generate_answers_what_lm_generate_writes(clm_dir, one_thread):
    from lm.infer.predict import load_trained

    trained = load_trained(clm_dir)
    prompts = ["The", "Once upon a time"]
    expected = [
        trained.continuation(p, max_new_tokens=6, temperature=0.0, top_k=None, top_p=None, seed=None)
        for p in prompts
    ]
    sampled = trained.continuation("The", max_new_tokens=5, temperature=0.8, top_k=40, top_p=0.95, seed=3)
    greedy, seeded, ready, score = asyncio.run(
        _calls(
            _app(clm_dir),
            (
                "POST",
                "/v1/generate",
                {"prompts": prompts, "max_new_tokens": 6, "temperature": 0, "top_k": None, "top_p": None},
            ),
            ("POST", "/v1/generate", {"prompts": ["The"], "seed": 3}),  # the rest from the defaults (viz:)
            ("GET", "/readyz", None),
            ("POST", "/v1/score", {"texts": ["a"]}),
        )
    )
    assert greedy.status_code == 200, greedy.text
    assert greedy.json() == {"completions": expected}
    assert seeded.json() == {"completions": [sampled]}
    assert ready.json() == {"status": "ready", "task": "clm", "endpoint": "/v1/generate"}
    assert score.status_code == 404 and "/v1/generate" in score.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            {"prompts": ["a"], "max_new_tokens": 0},
            "max_new_tokens: input should be greater than or equal to 1",
        ),
        ({"prompts": ["a"], "max_new_tokens": 300}, "more than serve.max_new_tokens (256)"),
        ({"prompts": ["a"], "temperature": "hot"}, "temperature:"),
        ({"prompts": ["a"], "beam": 4}, "beam: unknown field"),
        ({"texts": ["a"]}, "prompts: required"),
        ({"prompts": [""]}, "prompts[0]: empty string"),
    ],
)
def test_serve_generate_bad_options_get_422_naming_the_field(clm_dir, one_thread, body, words):
    bad, good = asyncio.run(
        _calls(
            _app(clm_dir),
            ("POST", "/v1/generate", body),
            ("POST", "/v1/generate", {"prompts": ["still up"], "max_new_tokens": 2}),
        )
    )
    assert bad.status_code == 422 and words in bad.json()["error"], bad.text
    assert good.status_code == 200


def test_serve_fill_answers_what_lm_predict_fills(mlm_dir, one_thread):
    from lm.infer.predict import load_trained

    texts = ["The <|mask|> sat on the mat", "I <|mask|> it, <|mask|> you"]
    expected = [load_trained(mlm_dir).fills(t, 3) for t in texts]
    fill, no_mask, generate = asyncio.run(
        _calls(
            _app(mlm_dir),
            ("POST", "/v1/fill", {"texts": texts, "top_k": 3}),
            ("POST", "/v1/fill", {"texts": ["no mask here"]}),
            ("POST", "/v1/generate", {"prompts": ["The"]}),
        )
    )
    assert fill.status_code == 200, fill.text
    got = fill.json()["fills"]
    assert [[f["position"] for f in row] for row in got] == [[p for p, _ in row] for row in expected]
    assert [len(row) for row in got] == [1, 2]
    for row, want in zip(got, expected):
        for f, (_, cands) in zip(row, want):
            assert [(c["token"], c["p"]) for c in f["top"]] == [(t, q) for t, q in cands]
    assert no_mask.status_code == 422 and "texts[0]: no <|mask|>" in no_mask.json()["error"]
    assert generate.status_code == 404 and "/v1/fill" in generate.json()["error"]


def test_serve_language_model_refuses_exported_backends(clm_dir, one_thread):
    app = create_app(ServeConfig(model_dir=str(clm_dir), backend="onnx-int8"))

    async def go():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(Exception, match="exported artifacts are classifiers only"):
        asyncio.run(go())
