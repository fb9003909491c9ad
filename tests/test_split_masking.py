"""Split, masking and batching against brute-force expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.data.masking import IGNORE_INDEX, drop_tokens, mask_tokens
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


def _masks(ids, mask, rows, epoch, seed=0):
    return mask_tokens(
        ids,
        mask,
        mask_prob=0.15,
        mask_id=63,
        special_ids=[60, 61, 62, 63],
        n_ordinary=60,
        rows=rows,
        seed=seed,
        epoch=epoch,
    )


def _rows_batch(B=400, L=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (B, L), generator=g)
    ids[:, 0] = 62  # cls
    lengths = torch.randint(10, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None] < lengths[:, None]
    ids[~mask] = 61
    return ids, mask, lengths


def test_bert_masking_rates_and_special_tokens():
    ids, mask, _ = _rows_batch()
    B = len(ids)
    corrupted, labels = _masks(ids, mask, np.arange(B), epoch=0)
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
    random_ids = corrupted[chosen & (corrupted != 63) & (corrupted != ids)]
    assert random_ids.numel() and int(random_ids.max()) < 60  # random replacements are ordinary tokens
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    assert chosen.any(dim=1).all()  # every row has a target


def test_random_replacements_are_uniform_over_ordinary_ids_and_independent():
    """The 10% random replacements: every ordinary id (0..59) equally likely, no special id, and the id drawn
    independently of the select/action draws, of the original token and of the position. Seen from outside:
    a replaced position is one that is neither <|mask|> nor its original token, and over all of them
    (originals uniform) each ordinary id is hit equally often. Deterministic (hash draws), so fixed thresholds
    are safe."""
    from scipy.stats import chi2, chi2_contingency

    B, L = 6000, 64
    ids = torch.randint(0, 60, (B, L), generator=torch.Generator().manual_seed(5))
    ids[:, 0] = 62  # cls
    mask = torch.ones(B, L, dtype=torch.bool)
    corrupted, labels = _masks(ids, mask, np.arange(B), epoch=0)
    chosen = labels != IGNORE_INDEX
    replaced = chosen & (corrupted != 63) & (corrupted != ids)
    n = int(replaced.sum())
    assert n == pytest.approx(chosen.sum().item() * 0.1 * 59 / 60, rel=0.05)
    new = corrupted[replaced]
    counts = torch.bincount(new, minlength=64).numpy()
    assert counts[60:].sum() == 0  # never a special id
    counts = counts[:60]
    # a replacement is uniform over the 59 ids other than the original: with uniform originals, 1/60 each
    expected = n / 60
    assert ((counts - expected) ** 2 / expected).sum() < chi2.ppf(0.999, 59)
    assert counts.min() > 0.6 * expected
    # independent of the position: the id's decile does not depend on where the token sits
    decile = (new // 6).numpy()
    table = np.zeros((10, 8))
    np.add.at(table, (decile, (replaced.nonzero()[:, 1] * 8 // L).numpy()), 1)
    assert chi2_contingency(table).pvalue > 0.001
    # and of the original token: given original o, each of the 59 other ids has probability 1/59
    orig = (ids[replaced] // 6).numpy()
    table = np.zeros((10, 10))
    np.add.at(table, (decile, orig), 1)
    expected = table.sum(axis=0)[None, :] * (6 - np.eye(10)) / 59  # (replacement decile, original decile)
    assert ((table - expected) ** 2 / expected).sum() < chi2.ppf(0.999, 90)


def test_masks_are_a_function_of_seed_epoch_row_not_of_batching():
    """What makes 2 DDP processes and accumulated micro-batches mask exactly like one big batch."""
    ids, mask, lengths = _rows_batch(B=24)
    rows = np.arange(100, 124)
    whole, whole_labels = _masks(ids, mask, rows, epoch=3)
    # the same rows in another order, split in two batches trimmed to their own longest row
    perm = np.random.default_rng(1).permutation(24)
    for part in np.array_split(perm, 2):
        width = int(lengths[part].max())
        c, lab = _masks(ids[part, :width], mask[part, :width], rows[part], epoch=3)
        assert torch.equal(c, whole[part, :width]) and torch.equal(lab, whole_labels[part, :width])
    other_epoch, _ = _masks(ids, mask, rows, epoch=4)
    other_seed, _ = _masks(ids, mask, rows, epoch=3, seed=1)
    assert not torch.equal(other_epoch, whole) and not torch.equal(other_seed, whole)
    again, _ = _masks(ids, mask, rows, epoch=3)
    assert torch.equal(again, whole)


def test_hash_uniform_is_uniform_and_independent_across_draws():
    from lm.data.masking import hash_uniform

    u = hash_uniform(7, 0, np.arange(2000), 50, 0)
    v = hash_uniform(7, 0, np.arange(2000), 50, 1)
    assert u.shape == (2000, 50) and u.min() >= 0 and u.max() < 1
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 43.8  # chi-square, 19 dof, p = 0.001
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.01  # neighbouring positions


def test_token_dropout_rate_specials_and_determinism():
    """Word dropout: about `rate` of the real ordinary tokens become <|mask|>; specials and padding never do;
    the choice is a function of (seed, epoch, row, position), not of the batch it lands in."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (400, 32), generator=g)
    ids[:, 0] = 62  # <|cls|>
    mask = torch.ones(400, 32, dtype=torch.bool)
    mask[:, 28:] = False
    ids[:, 28:] = 61  # <|pad|>
    rows = np.arange(400)
    kw = dict(rate=0.1, mask_id=63, special_ids=[60, 61, 62, 63], seed=3, epoch=1)
    out = drop_tokens(ids, mask, rows=rows, **kw)
    dropped = out != ids
    assert (out[dropped] == 63).all()
    assert not dropped[:, 0].any() and not dropped[:, 28:].any()
    n = 400 * 27
    assert abs(int(dropped.sum()) - 0.1 * n) < 5 * (n * 0.1 * 0.9) ** 0.5
    half = drop_tokens(ids[200:], mask[200:], rows=rows[200:], **kw)
    assert torch.equal(half, out[200:])
    assert not torch.equal(drop_tokens(ids, mask, rows=rows, **{**kw, "epoch": 2}), out)
    assert drop_tokens(ids, mask, rows=rows, **{**kw, "rate": 0.0}) is ids
