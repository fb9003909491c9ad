"""lm's CPU dropout keeps nn.Dropout's contract: drop rate p, survivors scaled by 1/(1-p), the same mask in
backward, identity in eval, reproducible from the seed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lm.model.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_drop_rate_and_scaling(p):
    torch.manual_seed(0)
    x = torch.rand(400_000) + 1.0  # no zeros of its own
    y = dropout(x, p, training=True)
    dropped = y == 0
    n = x.numel()
    # the drop count is Binomial(n, p): within 5 standard deviations
    assert abs(dropped.sum().item() - n * p) < 5 * math.sqrt(n * p * (1 - p))
    torch.testing.assert_close(y[~dropped], x[~dropped] / (1 - p))
    assert abs(y.mean().item() - x.mean().item()) < 0.01  # expectation preserved


def test_backward_uses_the_forward_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    g = torch.randn_like(y)
    y.backward(g)
    kept = y != 0
    torch.testing.assert_close(x.grad, torch.where(kept, g / 0.7, 0.0))


def test_eval_zero_and_one():
    x = torch.randn(5, 7)
    m = Dropout(0.4).eval()
    assert m(x) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.all(dropout(x, 1.0, training=True) == 0)
    assert torch.all(dropout(x, 1.0 - 1e-10, training=True) == 0)  # p whose 31-bit threshold would overflow
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_seeded_and_dtype_preserving():
    x = torch.randn(1000, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a = dropout(x, 0.2, True)
    torch.manual_seed(3)
    b = dropout(x, 0.2, True)
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)
    assert not torch.equal(a, dropout(x, 0.2, True))  # the generator moved on


def test_module_matches_nn_dropout_interface():
    ours, ref = Dropout(0.25), nn.Dropout(0.25)
    assert ours.state_dict() == ref.state_dict() == {}
    assert repr(ours) == "Dropout(p=0.25)"
    assert ours.training and not ours.eval().training
