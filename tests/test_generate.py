"""Generation: cached decoding == recompute (greedy), sampling filters against brute-force probabilities,
seeding, eos, max_len cropping, and input errors."""

from __future__ import annotations

import pytest
import torch

from lm.config import ModelConfig
from lm.errors import LmError
from lm.infer.generate import generate, next_token_probs, sample_next
from lm.model import build_model

V = 30


pytestmark = pytest.mark.usefixtures("one_thread")


def lm(kind="standard", max_len=16, seed=0, **kw):
    """A random decoder whose weights are scaled up so greedy paths are varied (not one repeated token)."""
    kw.setdefault("tie_embeddings", False)  # tied random embeddings mostly predict the input token again
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, attention=kind, **kw)
    model = build_model(cfg, task="clm", vocab_size=V, max_len=max_len, pad_id=0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


def recompute_greedy(model, prompt, n):
    """Reference: full forward over the last max_len tokens at every step, argmax of the last logits."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-model.max_len :]])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize(
    "kind", ["standard", "rotary", "linear", "performer", "cosformer", "yat-spherical", "slay"]
)
def test_cached_greedy_equals_recompute(kind):
    model = lm(kind, seed=1)
    prompt = [3, 7, 1, 4]
    ref = recompute_greedy(model, prompt, 30)  # runs past max_len = 16: cropping from the left
    assert len(set(ref)) >= 5  # a varied path, so the comparison means something
    assert generate(model, prompt, max_new_tokens=30, temperature=0, use_cache=True) == ref
    assert generate(model, prompt, max_new_tokens=30, temperature=0, use_cache=False) == ref


def test_long_prompt_is_cropped_and_new_ids_only_are_returned():
    model = lm(max_len=8)
    prompt = list(range(1, 21))  # longer than max_len
    out = generate(model, prompt, max_new_tokens=5, temperature=0)
    assert len(out) == 5 and out == recompute_greedy(model, prompt, 5)
    assert generate(model, prompt, max_new_tokens=0) == []


def test_seeded_sampling_is_reproducible_and_eos_stops():
    model = lm()
    a = generate(model, [1, 2], max_new_tokens=20, temperature=1.5, seed=11)
    assert a == generate(model, [1, 2], max_new_tokens=20, temperature=1.5, seed=11)
    assert a == generate(model, [1, 2], max_new_tokens=20, temperature=1.5, seed=11, use_cache=False)
    assert a != generate(model, [1, 2], max_new_tokens=20, temperature=1.5, seed=12)
    first = generate(model, [1, 2], max_new_tokens=1, temperature=0)[0]
    assert generate(model, [1, 2], max_new_tokens=10, temperature=0, eos_id=first) == [first]
    assert model.training is False


def test_generate_restores_training_mode_and_rejects_bad_input():
    model = lm().train()
    generate(model, [1], max_new_tokens=2, seed=0)
    assert model.training
    with pytest.raises(LmError, match="prompt"):
        generate(model, [], max_new_tokens=2)
    with pytest.raises(LmError, match="temperature"):
        generate(model, [1], max_new_tokens=2, temperature=-1.0)
    encoder = build_model(ModelConfig(d_model=16, n_heads=2), task="mlm", vocab_size=V, max_len=8, pad_id=0)
    with pytest.raises(LmError, match="causal"):
        generate(encoder, [1], max_new_tokens=2)


# ---- sample_next -------------------------------------------------------------------------------------------

LOGITS = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))


def frequencies(n=4000, **kw):
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(n):
        counts[sample_next(LOGITS, generator=g, **kw)] += 1
    return counts / n


def test_greedy_and_top1():
    assert sample_next(LOGITS, temperature=0.0) == 1
    assert sample_next(LOGITS, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0)) == 1
    assert sample_next(LOGITS, temperature=1.0, top_p=0.01, generator=torch.Generator().manual_seed(0)) == 1


@pytest.mark.parametrize(
    "kw,expected",
    [
        (dict(temperature=1.0), [0.05, 0.5, 0.15, 0.3]),
        (
            dict(temperature=0.5),
            [0.0025 / 0.365, 0.25 / 0.365, 0.0225 / 0.365, 0.09 / 0.365],
        ),  # p^2 renormalised
        (dict(temperature=1.0, top_k=2), [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]),
        (dict(temperature=1.0, top_p=0.8), [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]),  # 0.5 + 0.3 reaches 0.8
        (dict(temperature=1.0, top_p=0.81), [0.0, 0.5 / 0.95, 0.15 / 0.95, 0.3 / 0.95]),
        (dict(temperature=1.0, top_k=3, top_p=0.6), [0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8]),
    ],
)
def test_sampling_distribution_matches_brute_force(kw, expected):
    expected = torch.tensor(expected)
    torch.testing.assert_close(next_token_probs(LOGITS, **kw), expected, atol=1e-6, rtol=0)
    freq = frequencies(**kw)  # and sample_next draws from it
    assert torch.all(freq[expected == 0] == 0)  # filtered tokens are never drawn
    torch.testing.assert_close(freq, expected, atol=0.03, rtol=0)  # 4000 draws: std <= 0.008


def test_top_k_keeps_ties_and_top_p_one_keeps_all():
    logits = torch.tensor([1.0, 3.0, 3.0, 0.0])
    assert torch.equal(next_token_probs(logits, 1.0, top_k=1) > 0, torch.tensor([False, True, True, False]))
    torch.testing.assert_close(next_token_probs(logits, 1.0, top_p=1.0), torch.softmax(logits, -1))


def test_sample_next_rejects_bad_arguments():
    for kw in (dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(LmError):
            sample_next(LOGITS, **kw)
    with pytest.raises(LmError):
        sample_next(LOGITS[None], temperature=1.0)
