"""The endpoints of a language model: a decoder (task=clm) continues prompts, a masked LM (task=mlm) fills
masks.

    POST /v1/generate  {"prompts": ["Once upon a time"], "max_new_tokens": 32, "temperature": 0.8,
                        "top_k": 40, "top_p": 0.95, "seed": 0}
                       ->  {"completions": ["... the text written after"]}
    POST /v1/fill      {"texts": ["The cat <|mask|> on the mat"], "top_k": 5}
                       ->  {"fills": [[{"position": 3, "top": [{"token": " sat", "p": 0.41}, ...]}]]}

Both run in one thread of their own (generation is sequential token by token; requests are answered in turn),
so the event loop keeps answering health checks and refusing bad bodies meanwhile. The options are checked by
a pydantic model before any work: a wrong or unknown option is a 422 naming it. Sampling options default to
the `viz:` section of params.yaml, the same as the pipeline's own samples.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lm.errors import first_problem
from lm.special_tokens import MASK


class GenerateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_k: int | None = Field(40, ge=1)
    top_p: float | None = Field(0.95, gt=0.0, le=1.0)
    seed: int | None = None


class FillOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(5, ge=1, le=100)


def options(kind: type[BaseModel], given: dict[str, Any], defaults: dict[str, Any]) -> BaseModel:
    """The request's options over `defaults`; ValueError naming the first wrong field."""
    try:
        return kind.model_validate({**defaults, **given})
    except ValidationError as err:
        field, msg = first_problem(err)
        raise ValueError(f"{field or 'body'}: {msg.lower()}") from None


def generate(trained, prompts: list[str], opts: GenerateOptions) -> dict[str, Any]:
    """In the worker thread: each prompt's continuation, one after the other."""
    return {
        "completions": [
            trained.continuation(
                p,
                max_new_tokens=opts.max_new_tokens,
                temperature=opts.temperature,
                top_k=opts.top_k,
                top_p=opts.top_p,
                seed=opts.seed,
            )
            for p in prompts
        ]
    }


def fill(trained, texts: list[str], opts: FillOptions) -> dict[str, Any]:
    """In the worker thread: for each text, every <|mask|> position with its top candidates."""
    return {
        "fills": [
            [
                {"position": pos, "top": [{"token": t, "p": q} for t, q in cands]}
                for pos, cands in trained.fills(text, opts.top_k)
            ]
            for text in texts
        ]
    }


def check_masks(texts: list[str], mask_token: str = MASK) -> None:
    for i, text in enumerate(texts):
        if mask_token not in text:
            raise ValueError(f"texts[{i}]: no {mask_token}; put one where a token should be filled in")
