"""An interpolated Kneser-Ney n-gram language model over token ids: the classical baseline that lm's
language models must beat on the same test positions.

Why this and not a library: the baseline has to predict exactly the positions lm predicts, from lm's own
token ids, with whole distributions (for top-k accuracy) and no text round trip; NLTK's
`KneserNeyInterpolated` scores one word at a time in pure Python (hours on a test split). Here every level is
a sparse matrix, so a chunk of positions gets its (N, V) distributions from a few sparse-row gathers.

The model (Chen & Goodman 1998, interpolated Kneser-Ney with one absolute discount per order):

    P_k(w | ctx) = max(c_k(ctx, w) - D_k, 0) / c_k(ctx, .)
                   + D_k * T_k(ctx) / c_k(ctx, .) * P_{k-1}(w | ctx[1:])

where c_k is the raw count for the highest order and the continuation count (number of distinct tokens seen
before the n-gram) for the lower orders, T_k(ctx) the number of distinct words seen after ctx, and
D_k = n1 / (n1 + 2 n2) from the count-of-counts. The lowest order interpolates with the uniform
distribution, so every token has a non-zero probability. A context never seen in training (or one that
holds a token outside the vocabulary, e.g. a `<|mask|>` in masked-LM inputs, or runs off the window's
start: marked -1) backs off to the shorter context, as Kneser-Ney prescribes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import sparse


def _keys(grams: np.ndarray, vocab_size: int) -> np.ndarray:
    """(N, k) token ids -> (N,) int64 keys, unique per k-gram (base-V digits)."""
    key = np.zeros(len(grams), dtype=np.int64)
    for j in range(grams.shape[1]):
        key = key * vocab_size + grams[:, j].astype(np.int64)
    return key


def _discount(counts: np.ndarray) -> float:
    """D = n1 / (n1 + 2 n2); 0.5 when the count-of-counts cannot say (no singletons or no doubletons)."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


@dataclass
class _Level:
    """One context length: the discounted mass A[ctx, w] as a CSR matrix, the back-off weight gamma[ctx],
    and the sorted context keys that map a context to its row."""

    ctx_keys: np.ndarray  # (C,) int64, sorted
    mass: sparse.csr_matrix  # (C, V)
    gamma: np.ndarray  # (C,) float64

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Row of each context key, -1 where the context was never seen."""
        if not len(self.ctx_keys):
            return np.full(len(keys), -1)
        pos = np.minimum(np.searchsorted(self.ctx_keys, keys), len(self.ctx_keys) - 1)
        return np.where(self.ctx_keys[pos] == keys, pos, -1)


class KneserNey:
    """Interpolated Kneser-Ney LM of `order` (>= 2) over ids 0..vocab_size-1.

    >>> lm = KneserNey(order=2, vocab_size=3).fit([np.array([0, 1, 0, 1, 0, 2])])
    >>> p = lm.probs(np.array([[0]]))[0]
    >>> bool(p[1] > p[2]) and abs(p.sum() - 1) < 1e-12
    True
    """

    def __init__(self, order: int, vocab_size: int):
        if order < 2:
            raise ValueError(f"order must be >= 2, got {order}")
        if vocab_size ** (order - 1) >= 2**62 // vocab_size:
            raise ValueError(
                f"order {order} with a vocabulary of {vocab_size} does not fit 64-bit n-gram keys"
            )
        self.order, self.vocab_size = order, vocab_size
        self.unigram: np.ndarray | None = None  # (V,) lowest-order distribution
        self.levels: list[_Level] = []  # context length 1 .. order-1

    def fit(self, streams: Iterable[np.ndarray]) -> KneserNey:
        """Count n-grams inside each stream (a run of consecutive tokens; n-grams never cross streams)."""
        V, n = self.vocab_size, self.order
        grams: list[list[np.ndarray]] = [[] for _ in range(n + 1)]  # grams[k]: (N, k) arrays
        for s in streams:
            s = np.asarray(s, dtype=np.int64)
            if s.size and (s.min() < 0 or s.max() >= V):
                raise ValueError(f"token ids must lie in [0, {V})")
            for k in range(1, n + 1):
                if len(s) >= k:
                    grams[k].append(sliding_window_view(s, k))
        stacked = {
            k: (np.concatenate(grams[k]) if grams[k] else np.zeros((0, k), np.int64)) for k in range(1, n + 1)
        }
        if len(stacked[1]) == 0:
            raise ValueError("no training tokens for the n-gram baseline")

        # counts per k-gram: raw for the highest order, continuation counts (distinct predecessors) below
        counted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        keys_n, counts_n = np.unique(_keys(stacked[n], V), return_counts=True)
        counted[n] = (keys_n, counts_n)
        for k in range(n - 1, 0, -1):
            longer = np.unique(_keys(stacked[k + 1], V))  # distinct (k+1)-grams
            suffix = longer % (V**k)  # their last k tokens
            counted[k] = tuple(np.unique(suffix, return_counts=True))

        keys1, cont1 = counted[1]
        d1 = _discount(cont1)
        uni = np.zeros(V)
        uni[keys1] = np.maximum(cont1 - d1, 0.0)
        total1 = cont1.sum()
        uni = uni / total1 + d1 * len(keys1) / total1 / V
        self.unigram = uni / uni.sum()

        self.levels = []
        for k in range(2, n + 1):
            keys, counts = counted[k]
            D = _discount(counts)
            ctx, word = keys // V, keys % V
            ctx_keys, row = np.unique(ctx, return_inverse=True)
            totals = np.bincount(row, weights=counts).astype(np.float64)
            types = np.bincount(row).astype(np.float64)
            mass = sparse.csr_matrix(
                (np.maximum(counts - D, 0.0) / totals[row], (row, word)), shape=(len(ctx_keys), V)
            )
            self.levels.append(_Level(ctx_keys, mass, D * types / totals))
        return self

    def probs(self, contexts: np.ndarray) -> np.ndarray:
        """(N, order-1) preceding tokens (oldest first; -1 = unknown) -> (N, V) next-token probabilities."""
        if self.unigram is None:
            raise RuntimeError("fit the model first")
        contexts = np.asarray(contexts, dtype=np.int64)
        if contexts.ndim != 2 or contexts.shape[1] != self.order - 1:
            raise ValueError(f"contexts must have shape (N, {self.order - 1}), got {contexts.shape}")
        V = self.vocab_size
        p = np.broadcast_to(self.unigram, (len(contexts), V)).copy()
        for c, level in enumerate(self.levels, start=1):
            ctx = contexts[:, -c:]
            known = (ctx >= 0).all(axis=1) & (ctx < V).all(axis=1)
            rows = np.full(len(contexts), -1)
            if known.any():
                rows[known] = level.rows(_keys(ctx[known], V))
            hit = np.flatnonzero(rows >= 0)
            if len(hit):
                r = rows[hit]
                p[hit] = level.mass[r].toarray() + level.gamma[r][:, None] * p[hit]
        return p


def left_contexts(
    input_ids: np.ndarray, positions: tuple[np.ndarray, np.ndarray], width: int, *, inclusive: bool
) -> np.ndarray:
    """The `width` tokens before each (row, col) position of `input_ids` (B, L), oldest first, -1 before the
    row's start. inclusive=True ends the context at the position itself (next-token prediction: the input at
    j precedes the label at j); False ends it just before (masked prediction of the token at j)."""
    rows, cols = positions
    end = cols + (1 if inclusive else 0)  # exclusive end
    offs = np.arange(-width, 0)
    idx = end[:, None] + offs[None, :]  # (N, width)
    return np.where(idx >= 0, input_ids[rows[:, None], np.clip(idx, 0, None)], -1)
