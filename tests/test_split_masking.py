"""Split, masking and batching against brute-force expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.data.masking import IGNORE_INDEX, mask_tokens
from lm.data.split import split_indices, split_summary
from lm.errors import LmError


def test_stratified_split_is_a_partition_with_preserved_class_ratio():
    rng = np.random.default_rng(0)
    labels = rng.random(2000) < 0.1
    parts = split_indices(2000, val_fraction=0.1, test_fraction=0.2, seed=3, labels=labels)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(2000))
    assert (len(parts["val"]), len(parts["test"])) == (200, 400)
    overall = labels.mean()
    for idx in parts.values():
        assert abs(labels[idx].mean() - overall) < 0.01
    again = split_indices(2000, val_fraction=0.1, test_fraction=0.2, seed=3, labels=labels)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    other = split_indices(2000, val_fraction=0.1, test_fraction=0.2, seed=4, labels=labels)
    assert not np.array_equal(parts["test"], other["test"])
    summary = split_summary(parts, labels)
    assert summary["test"]["n_pos"] == int(labels[parts["test"]].sum())


def test_split_refuses_when_no_training_rows_or_one_class():
    with pytest.raises(LmError, match="no training rows"):
        split_indices(2, val_fraction=0.4, test_fraction=0.4, seed=0)
    with pytest.raises(LmError, match="each class"):
        split_indices(50, val_fraction=0.1, test_fraction=0.1, seed=0, labels=np.zeros(50, dtype=bool))


def test_bert_masking_rates_and_special_tokens():
    g = torch.Generator().manual_seed(0)
    B, L, specials = 400, 64, [60, 61, 62, 63]
    ids = torch.randint(0, 60, (B, L))
    ids[:, 0] = 62  # cls
    lengths = torch.randint(10, L + 1, (B,))
    mask = torch.arange(L)[None] < lengths[:, None]
    ids[~mask] = 61
    corrupted, labels = mask_tokens(ids, mask, mask_prob=0.15, mask_id=63, special_ids=specials, n_ordinary=60, generator=g)
    chosen = labels != IGNORE_INDEX
    assert not chosen[:, 0].any() and not chosen[~mask].any()  # never cls or pad
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum().item() / (mask.sum().item() - B)
    assert 0.14 < rate < 0.17
    became_mask = (corrupted == 63) & chosen
    unchanged = (corrupted == ids) & chosen
    n = chosen.sum().item()
    assert abs(became_mask.sum().item() / n - 0.8) < 0.03
    # 10% random + 10% kept (a random draw equals the original 1/60 of the time)
    assert abs(unchanged.sum().item() / n - (0.1 + 0.1 / 60)) < 0.03
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    assert chosen.any(dim=1).all()  # every row has a target
