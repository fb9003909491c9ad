"""train.bucket_by_length: classify batches of rows of similar length (lm.train.stream.bucket_order).

Checked against the plain shuffled stream: the same rows every epoch (each exactly once), deterministic for a
seed, every step made of rows close in length, far fewer padding tokens, and DDP ranks disjoint shares of the
same global step.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tiny_params, write_fake_encoded

from lm.config import ConfigError, TrainConfig, parse_params
from lm.data.batches import RowItems
from lm.train.distributed import Dist
from lm.train.plan import open_data
from lm.train.stream import BUCKET_STEPS, TrainStream, bucket_order, class_weights

N = 3001  # rows; not a multiple of any global batch below, so every epoch has a skipped tail
CPU = Dist(rank=0, world_size=1, local_rank=0, device=None)  # open_data only reads rank and world size


def items(n: int = N, seed: int = 0) -> RowItems:
    """Rows with lengths 1..256 (a long tail, like comments): only their lengths matter to the order."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1 / 40, n), 256).astype(np.int32)
    return RowItems(SimpleNamespace(lengths=lengths), np.arange(n, dtype=np.int64))


def stream(
    bucket: bool = True, *, seed: int = 7, batch: int = 8, accum: int = 2, rank: int = 0, world: int = 1, **kw
) -> TrainStream:
    return TrainStream(
        items(),
        seed=seed,
        batch_size=batch,
        grad_accum_steps=accum,
        rank=rank,
        world_size=world,
        bucket_by_length=bucket,
        **kw,
    )


def epoch_steps(s: TrainStream, epoch: int) -> list[list[np.ndarray]]:
    """This rank's micro-batches (item indices) of every step of the epoch."""
    return [s.step_indices(epoch, i) for i in range(s.steps_in_epoch(epoch))]


def flat(steps: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([m for step in steps for m in step])


def padded_tokens(s: TrainStream, epoch: int) -> tuple[int, int]:
    """(tokens in the padded micro-batches, real tokens) over the epoch: a batch is as wide as its longest
    row."""
    lengths = s.items.lengths()
    widths = [len(m) * lengths[m].max() for step in epoch_steps(s, epoch) for m in step]
    return int(sum(widths)), int(lengths[flat(epoch_steps(s, epoch))].sum())


def test_bucket_trains_on_every_row_exactly_once_per_epoch():
    s, plain = stream(), stream(bucket=False)
    G = s.global_batch
    for epoch in (0, 1, 2):
        seen = flat(epoch_steps(s, epoch))
        assert len(seen) == len(np.unique(seen)) == N // G * G  # once each; the tail (< G rows) skipped
        # the very rows the plain shuffled epoch trains on: bucketing only reorders them
        assert np.array_equal(np.sort(seen), np.sort(flat(epoch_steps(plain, epoch))))
    tails = [set(range(N)) - set(flat(epoch_steps(s, e)).tolist()) for e in (0, 1)]
    assert tails[0] != tails[1]  # a different tail every epoch


def test_bucket_order_is_deterministic_for_a_seed_and_new_every_epoch():
    a, b = flat(epoch_steps(stream(), 0)), flat(epoch_steps(stream(), 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, flat(epoch_steps(stream(), 1)))
    assert not np.array_equal(a, flat(epoch_steps(stream(seed=8), 0)))
    # a step is a function of (seed, epoch, step) alone: a fresh stream asked for step 17 first agrees
    assert all(
        np.array_equal(x, y) for x, y in zip(stream().step_indices(0, 17), epoch_steps(stream(), 0)[17])
    )


def test_bucket_steps_hold_rows_of_similar_length_and_padding_shrinks():
    s, plain = stream(), stream(bucket=False)
    lengths = s.items.lengths()
    steps = [np.concatenate(step) for step in epoch_steps(s, 0)]
    spread = np.mean([np.ptp(lengths[st]) for st in steps])
    plain_spread = np.mean([np.ptp(lengths[np.concatenate(st)]) for st in epoch_steps(plain, 0)])
    assert spread < 0.1 * plain_spread
    padded, real = padded_tokens(s, 0)
    plain_padded, plain_real = padded_tokens(plain, 0)
    assert real == plain_real
    assert padded - real < 0.1 * (plain_padded - plain_real)  # padding mostly gone
    # step lengths are shuffled over the epoch, not sorted: long and short steps alternate
    means = np.array([lengths[st].mean() for st in steps])
    assert not np.all(np.diff(means) >= 0) and abs(np.corrcoef(np.arange(len(means)), means)[0, 1]) < 0.3


def test_bucket_groups_are_consecutive_length_ranks_within_a_chunk_of_the_shuffled_epoch():
    """The definition, checked by brute force: take the plain epoch permutation, cut its first steps x G
    items into chunks of BUCKET_STEPS x G; every step's items lie in one chunk, and within a chunk the steps
    do not overlap in length (they are consecutive runs of the chunk sorted by length)."""
    s, plain = stream(), stream(bucket=False)
    G, lengths = s.global_batch, s.items.lengths()
    order = flat(epoch_steps(plain, 0))  # the plain permutation's head, in order
    chunk_of = np.empty(N, dtype=np.int64)
    chunk_of[order] = np.arange(len(order)) // (BUCKET_STEPS * G)
    by_chunk: dict[int, list[tuple[int, int]]] = {}
    for step in epoch_steps(s, 0):
        st = np.concatenate(step)
        assert len(np.unique(chunk_of[st])) == 1
        by_chunk.setdefault(int(chunk_of[st[0]]), []).append((int(lengths[st].min()), int(lengths[st].max())))
    assert len(by_chunk) == -(-len(order) // (BUCKET_STEPS * G))
    for ranges in by_chunk.values():
        ranges.sort()
        assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(ranges, ranges[1:]))


def test_bucket_order_small_cases():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    lengths = np.array([5, 1, 4, 2, 6, 3, 9])
    out = bucket_order(np.arange(7), lengths, 2, rng(), chunk_groups=2)
    assert sorted(out.tolist()) == list(range(7)) and out[-1] == 6  # tail stays last
    pairs = {tuple(sorted(out[i : i + 2].tolist())) for i in range(0, 6, 2)}
    assert pairs == {(1, 3), (0, 2), (4, 5)}  # chunk [0..3] sorted by length: 1,3 | 2,0; chunk [4,5]: 5,4
    assert bucket_order(np.arange(1), lengths[:1], 2, rng()).tolist() == [0]  # all tail
    assert np.array_equal(bucket_order(np.arange(7), lengths, 2, rng(), chunk_groups=2), out)


@pytest.mark.parametrize("world, batch, accum", [(2, 4, 2), (4, 2, 2), (2, 8, 1)])
def test_bucket_ddp_ranks_take_disjoint_shares_of_the_one_process_step(world, batch, accum):
    """Ranks x micro-batches split each global step of the single-process stream (same global batch, 16):
    disjoint, together the same rows, and each rank's micro-batches are of similar length too."""
    one = stream(batch=16, accum=1)
    ranks = [stream(batch=batch, accum=accum, rank=r, world=world) for r in range(world)]
    lengths = one.items.lengths()
    for epoch in (0, 1):
        per_rank = [epoch_steps(r, epoch) for r in ranks]
        for i, (big,) in enumerate(epoch_steps(one, epoch)):
            shares = [np.concatenate(pr[i]) for pr in per_rank]
            parts = np.concatenate(shares)
            assert len(np.unique(parts)) == len(parts) == 16  # disjoint
            assert np.array_equal(np.sort(parts), np.sort(big))
        every = np.concatenate([flat(pr) for pr in per_rank])
        assert len(np.unique(every)) == len(every)
        padded = sum(len(m) * lengths[m].max() for pr in per_rank for step in pr for m in step)
        assert (
            padded - lengths[every].sum()
            < 0.1 * (padded_tokens(stream(False, batch=batch, accum=accum), epoch)[0])
        )


def test_bucket_with_the_weighted_sampler_reorders_the_same_draws():
    labels = items().lengths() > 60
    kw = dict(sampler="weighted", weights=class_weights(labels))
    b, p = flat(epoch_steps(stream(**kw), 0)), flat(epoch_steps(stream(False, **kw), 0))
    assert np.array_equal(np.sort(b), np.sort(p)) and not np.array_equal(b, p)


def test_bucket_config_key_is_off_by_default_and_only_classify_streams_bucket(tmp_path):
    """Opt-in (it cost real-data ROC-AUC, see README): params.yaml and the typed default leave it off; clm/mlm
    windows are never padded, so those tasks accept the key and train on the plain stream, as does
    pretraining."""
    assert parse_params(tiny_params()).train.bucket_by_length is False
    assert TrainConfig().bucket_by_length is False
    assert parse_params(tiny_params(**{"train.bucket_by_length": True})).train.bucket_by_length is True
    with pytest.raises(ConfigError, match=r"train\.bucket_by_length"):
        parse_params(tiny_params(**{"train.bucket_by_length": "yes please"}))
    from stages.pretrain import pretrain_params

    pre = pretrain_params(
        parse_params(tiny_params(**{"pretrain.source": "x.txt", "train.bucket_by_length": True}))
    )
    assert pre.task == "mlm" and pre.train.bucket_by_length is False
    with pytest.raises(ValueError, match="bucket_by_length"):
        TrainStream(SimpleNamespace(), seed=0, batch_size=2, grad_accum_steps=1, bucket_by_length=True)
    for task in ("clm", "mlm"):
        write_fake_encoded(tmp_path / task, task, n_docs=64)
        params = parse_params(
            tiny_params(**{"task": task, "train.batch_size": 4, "train.bucket_by_length": True})
        )
        assert params.train.bucket_by_length
        data = open_data(params, tmp_path / task / "data/encoded", tmp_path / task / "data/split", CPU)
        assert data.stream.bucket_by_length is False


def test_bucket_training_batches_are_padded_to_their_longest_row(tmp_path):
    """Through the run's data (open_data on encoded rows): train.bucket_by_length reaches the stream, and
    every micro-batch is as wide as its longest row, narrower on average than the plain stream's."""
    write_fake_encoded(tmp_path, "classify", n_docs=400, max_len=16)

    def widths(bucket: bool) -> list[int]:
        params = parse_params(tiny_params(**{"train.batch_size": 8, "train.bucket_by_length": bucket}))
        data = open_data(params, tmp_path / "data/encoded", tmp_path / "data/split", CPU)
        assert data.stream.bucket_by_length is bucket
        out = []
        for step in range(data.stream.steps_in_epoch(0)):
            for idx, b in zip(data.stream.step_indices(0, step), data.stream.micro_batches(0, step)):
                longest = int(data.train_items.lengths()[idx].max())
                assert b["input_ids"].shape[1] == longest == int(b["attention_mask"].sum(1).max())
                out.append(longest)
        return out

    bucketed, plain = widths(True), widths(False)
    assert len(bucketed) == len(plain) and np.mean(bucketed) < np.mean(plain) - 1
