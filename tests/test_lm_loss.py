"""The chunked LM head + cross-entropy against the plain route: F.linear ->
F.cross_entropy(reduction="sum")."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lm.config import ModelConfig
from lm.data.masking import IGNORE_INDEX
from lm.model import build_model, lm_loss
from lm.model.lm_loss import linear_cross_entropy_sum

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(N=300, E=24, V=97, bias=True, ignore_every=0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, E, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(V, E, generator=g, dtype=dtype) * 0.3).requires_grad_()
    b = (torch.randn(V, generator=g, dtype=dtype) * 0.1).requires_grad_() if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = IGNORE_INDEX
    return h, w, b, t


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [x for x in tensors if x is not None])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ignore_every", [0, 3])
def test_loss_and_gradients_equal_the_plain_route(bias, ignore_every, monkeypatch):
    monkeypatch.setattr(
        lm_loss, "_chunk_rows", lambda vocab, device: 64
    )  # 300 rows -> 5 chunks, the last one short
    h, w, b, t = _problem(bias=bias, ignore_every=ignore_every)
    ref = F.cross_entropy(F.linear(h, w, b).float(), t, ignore_index=IGNORE_INDEX, reduction="sum")
    got = linear_cross_entropy_sum(h, w, b, t, IGNORE_INDEX)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    # a non-unit upstream gradient (mean reduction, loss scaling) must reach every input
    for g_ref, g_got in zip(_grads(0.37 * ref, (h, w, b)), _grads(0.37 * got, (h, w, b))):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)


def test_gradcheck_in_double(monkeypatch):
    monkeypatch.setattr(lm_loss, "_chunk_rows", lambda vocab, device: 4)
    h, w, b, t = _problem(N=10, E=5, V=7, ignore_every=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy_sum(h, w, b, t), (h, w, b))


def test_ignored_rows_get_zero_gradient_and_all_ignored_gives_zero():
    h, w, b, t = _problem(N=12, ignore_every=2)
    (gh,) = torch.autograd.grad(linear_cross_entropy_sum(h, w, b, t), [h])
    assert torch.all(gh[::2] == 0) and torch.all(gh[1::2].abs().sum(1) > 0)
    t[:] = IGNORE_INDEX
    loss = linear_cross_entropy_sum(h, w, b, t)
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, [h, w])
    assert not gh.any() and not gw.any()


class _CountCalls(TorchFunctionMode):
    def __init__(self, name):
        super().__init__()
        self.name, self.calls = name, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += getattr(func, "__name__", "") == self.name
        return func(*args, **(kwargs or {}))


def test_no_grad_gives_the_loss_only_and_skips_the_gradient_work():
    h, w, b, t = _problem()
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction="sum")
    with torch.no_grad(), _CountCalls("exp_") as counter:  # exp_ turns log-probs into the gradient
        got = linear_cross_entropy_sum(h, w, b, t)
    assert not got.requires_grad and counter.calls == 0
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-4)
    with _CountCalls("exp_") as counter:
        linear_cross_entropy_sum(h, w, b, t)
    assert counter.calls > 0


def test_double_backward_is_refused_not_silently_wrong():
    h, w, b, t = _problem(N=8)
    (gh,) = torch.autograd.grad(linear_cross_entropy_sum(h, w, b, t), [h], create_graph=True)
    with pytest.raises(RuntimeError):
        gh.sum().backward()


def test_bf16_autocast_matches_the_plain_route_under_autocast():
    h, w, b, t = _problem(N=64, E=32, V=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w, b).float(), t, reduction="sum")
        got = linear_cross_entropy_sum(h, w, b, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=0.0)
    for g_ref, g_got in zip(_grads(ref, (h, w, b)), _grads(got, (h, w, b))):
        assert g_got.dtype == torch.float32
        torch.testing.assert_close(g_got, g_ref, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("task", ["mlm", "clm"])
@pytest.mark.parametrize("tie", [True, False])
def test_models_given_labels_return_the_summed_cross_entropy_of_their_logits(task, tie):
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, tie_embeddings=tie)
    model = build_model(cfg, task=task, vocab_size=40, max_len=12, pad_id=0, seed=0)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 40, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    labels = torch.randint(1, 40, (3, 12), generator=g)
    labels[torch.rand(3, 12, generator=g) < 0.4] = IGNORE_INDEX
    out = model(ids, mask, labels=labels)
    assert out.logits is None
    logits = model(ids, mask).logits
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    torch.testing.assert_close(out.loss, ref, rtol=1e-6, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    for g_ref, g_got in zip(torch.autograd.grad(ref, params), torch.autograd.grad(out.loss, params)):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-6)
