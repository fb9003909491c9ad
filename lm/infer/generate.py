"""Autoregressive sampling from a CausalLM: temperature, top-k, nucleus (top-p), KV cache.

With the cache each step feeds one token and the saved per-layer state; without it each step recomputes the
whole (cropped) context. Both give the same tokens. Past `model.max_len` tokens the context is cropped from
the left and the cache is abandoned for recompute over the last max_len tokens (positions would shift).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lm.errors import LmError


def next_token_probs(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """The distribution sample_next draws from: softmax(logits / temperature) restricted to the top_k most
    likely tokens and to the nucleus (the smallest most-likely set whose probability reaches top_p),
    renormalised. temperature 0 gives a one-hot on the argmax. logits: (V,) -> probs: (V,) fp32."""
    if logits.dim() != 1:
        raise LmError(f"sample_next expects logits of shape (vocab,), got {tuple(logits.shape)}")
    if temperature < 0:
        raise LmError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise LmError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise LmError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.detach().float()
    if temperature == 0.0:
        return torch.nn.functional.one_hot(torch.argmax(logits), logits.numel()).float()
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
        drop_sorted = before >= top_p  # the most likely token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, dim=-1)


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id from logits (V,). temperature 0 means greedy (argmax); top_k keeps the k most likely
    tokens; top_p keeps the smallest set of most likely tokens whose probability reaches p."""
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if temperature == 0.0:
        return int(torch.argmax(probs))
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> list[int]:
    """Continue `prompt_ids`; return only the new ids (stops early after emitting `eos_id`)."""
    if not prompt_ids:
        raise LmError("generate needs a non-empty prompt (start with the end-of-text token for an empty one)")
    if max_new_tokens < 0:
        raise LmError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not getattr(getattr(model, "trunk", None), "causal", False):
        raise LmError("generate needs a causal language model (task=clm)")
    max_len: int = model.max_len
    device = next(model.parameters()).device
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    try:
        ids = list(prompt_ids)
        new: list[int] = []
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.length < max_len:
                out = model.decode(torch.tensor([ids[-1:]], device=device), cache=cache)
            else:
                context = torch.tensor([ids[-max_len:]], device=device)
                fits = use_cache and len(ids) < max_len  # a cache primed here can still grow by one
                out = model.decode(context) if fits else model(context)
            cache = out.cache
            token = sample_next(out.logits[0, -1], temperature, top_k, top_p, generator)
            ids.append(token)
            new.append(token)
            if eos_id is not None and token == eos_id:
                break
        return new
    finally:
        model.train(was_training)
