"""Which items every rank trains on at every optimizer step: a pure function of (seed, epoch, step, rank).

No sampler or generator carries state from one step to the next, so a run resumed at (epoch, step) sees
exactly the batches the uninterrupted run would have seen (no replay, no skipped data), and the split of a
global step over processes and micro-batches never changes which items the step contains:

- the epoch's order is drawn from (seed, epoch), identical on every rank: a permutation (``shuffle``,
  without replacement), or classes drawn equally often with replacement (``weighted``, classify);
- step s of the epoch takes the global block order[s*G : (s+1)*G], G = batch_size x grad_accum x world;
  rank r takes its contiguous share of the block and cuts it into grad_accum micro-batches;
- clm / mlm windows are re-cut every epoch on a grid shifted by a random offset (WindowItems.with_offset),
  then permuted: random windows, without replacement within an epoch;
- with ``bucket_by_length`` (classify) the epoch's order is regrouped so that every step's G items have
  similar lengths (`bucket_order`): a batch is padded to its longest row, so similar rows waste little on
  padding. Every rank's share and micro-batch of a step is a slice of those G items, so ranks stay disjoint
  and get similar work.
- train.tokens_per_epoch (clm / mlm) caps an epoch at the first ceil(tokens_per_epoch / stride) windows of
  that permutation: every epoch is a fresh seeded draw of that many tokens from the whole corpus, so a corpus
  too big to go through between two validations still has epochs of a chosen size.

The tail of an epoch smaller than G is skipped (a different tail every epoch, since the order changes).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from lm.data.batches import RowItems, WindowItems

_M64 = (1 << 64) - 1
_ORDER, _OFFSET, _STEP, _BUCKET = 0, 1, 2, 3  # independent random streams
BUCKET_STEPS = 50  # bucket_by_length sorts the items of this many consecutive steps together


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & _M64, *keys])


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed for the torch RNG during optimizer step `step` on `rank` (dropout): re-seeding every step makes
    the random stream a function of the position, so it needs no saved state to resume exactly."""
    return int(np.random.SeedSequence([seed & _M64, _STEP, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def bucket_order(
    order: np.ndarray,
    lengths: np.ndarray,
    group: int,
    rng: np.random.Generator,
    chunk_groups: int = BUCKET_STEPS,
) -> np.ndarray:
    """`order` (item indices) rearranged so that each run of `group` items has similar lengths, with the same
    items: the first len // group * group items are cut into chunks of `chunk_groups` groups, each chunk is
    sorted by length (stable: equal lengths keep their random order), cut into groups, and the groups of the
    whole epoch are shuffled; the tail (fewer than `group` items) stays last. lengths: (n_items,).

    Sorting within chunks rather than the whole epoch keeps some randomness in which rows meet in a batch, and
    shuffling the groups keeps short and long batches spread over the epoch.

    >>> bucket_order(np.arange(6), np.array([5, 1, 4, 2, 6, 3]), 2, np.random.default_rng(0), chunk_groups=3)
    array([0, 4, 1, 3, 5, 2])"""
    order = np.asarray(order, dtype=np.int64)
    n = len(order) // group * group
    head, tail = order[:n], order[n:]
    size = chunk_groups * group
    chunks = [c[np.argsort(lengths[c], kind="stable")] for c in np.split(head, np.arange(size, n, size))]
    groups = np.concatenate(chunks).reshape(-1, group) if n else head.reshape(0, group)
    return np.concatenate([groups[rng.permutation(len(groups))].ravel(), tail])


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Per-item sampling probabilities that give each class half the draws (bool labels)."""
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(len(labels), 1.0 / max(len(labels), 1))
    return np.where(labels, 0.5 / n_pos, 0.5 / n_neg)


class TrainStream:
    """The training items of one rank, step by step; see the module docstring."""

    def __init__(
        self,
        items: RowItems | WindowItems,
        *,
        seed: int,
        batch_size: int,
        grad_accum_steps: int,
        rank: int = 0,
        world_size: int = 1,
        sampler: Literal["shuffle", "weighted"] = "shuffle",
        weights: np.ndarray | None = None,
        bucket_by_length: bool = False,
        tokens_per_epoch: int | None = None,
    ):
        if sampler == "weighted" and weights is None:
            raise ValueError("sampler='weighted' needs per-item weights")
        self.items, self.seed = items, seed
        self.batch_size, self.grad_accum_steps = batch_size, grad_accum_steps
        self.rank, self.world_size = rank, world_size
        self.sampler = sampler
        if bucket_by_length and not isinstance(items, RowItems):
            raise ValueError("bucket_by_length needs document rows (classify); packed windows are all full")
        self.bucket_by_length = bucket_by_length
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self._cached: tuple[int, RowItems | WindowItems, np.ndarray] | None = None
        if tokens_per_epoch is not None and not isinstance(items, WindowItems):
            raise ValueError("tokens_per_epoch applies to clm / mlm windows only")
        self.tokens_per_epoch = tokens_per_epoch

    @property
    def global_batch(self) -> int:
        """Items per optimizer step over all ranks."""
        return self.batch_size * self.grad_accum_steps * self.world_size

    def window_offset(self, epoch: int) -> int:
        return int(_rng(self.seed, _OFFSET, epoch).integers(0, self.items.stride))

    def epoch_items(self, epoch: int) -> RowItems | WindowItems:
        if isinstance(self.items, WindowItems):
            return self.items.with_offset(self.window_offset(epoch))
        return self.items

    def items_in_epoch(self, epoch: int) -> int:
        n = len(self.epoch_items(epoch))
        if self.tokens_per_epoch is None:
            return n
        return min(n, -(-self.tokens_per_epoch // self.items.stride))

    def steps_in_epoch(self, epoch: int) -> int:
        return self.items_in_epoch(epoch) // self.global_batch

    def schedule(self, epochs: int, max_steps: int | None) -> list[int]:
        """Optimizer steps of each epoch, truncated at max_steps (the last entries may be 0)."""
        out, left = [], max_steps if max_steps else np.inf
        for e in range(epochs):
            n = int(min(self.steps_in_epoch(e), left))
            out.append(n)
            left -= n
        return out

    def _epoch(self, epoch: int) -> tuple[RowItems | WindowItems, np.ndarray]:
        if self._cached is None or self._cached[0] != epoch:
            items = self.epoch_items(epoch)
            rng = _rng(self.seed, _ORDER, epoch)
            if self.sampler == "weighted":
                order = rng.choice(len(items), size=len(items), replace=True, p=self.weights)
            else:
                order = rng.permutation(len(items))[: self.items_in_epoch(epoch)]
            if self.bucket_by_length:
                order = bucket_order(
                    order, items.lengths(), self.global_batch, _rng(self.seed, _BUCKET, epoch)
                )
            self._cached = (epoch, items, order.astype(np.int64))
        return self._cached[1], self._cached[2]

    def step_indices(self, epoch: int, step_in_epoch: int) -> list[np.ndarray]:
        """Item indices of this rank's micro-batches for one optimizer step."""
        _, order = self._epoch(epoch)
        G, per_rank = self.global_batch, self.batch_size * self.grad_accum_steps
        block = order[step_in_epoch * G : (step_in_epoch + 1) * G]
        if len(block) < G:
            raise IndexError(f"epoch {epoch} has no step {step_in_epoch}")
        mine = block[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [mine[m * self.batch_size : (m + 1) * self.batch_size] for m in range(self.grad_accum_steps)]

    def micro_batches(self, epoch: int, step_in_epoch: int) -> list[dict[str, torch.Tensor]]:
        items, _ = self._epoch(epoch)
        return [items.batch(idx) for idx in self.step_indices(epoch, step_in_epoch)]
