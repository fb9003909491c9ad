"""tokenizer.max_words bounds the pre-token counter on corpora whose distinct words keep growing: the rarest
words are dropped, frequent words keep exact counts, and under the cap training is exact."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lm.tokenizer.pretokenize import count_pretokens, prune_rarest
from lm.tokenizer.train import train_bpe

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]


def _corpus(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Common words plus one number per document that never repeats (the long tail of real text)."""
    rng = np.random.default_rng(seed)
    common = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    return [" ".join(rng.choice(common, 20)) + f" id{1000 + i}" for i in range(n_docs)]


def test_prune_rarest_drops_the_rarest_down_to_half():
    units = Counter({f"w{i}": 1 for i in range(10)} | {"x": 5, "y": 2, "z": 9})
    prune_rarest(units, max_units=8)
    assert dict(units) == {"x": 5, "y": 2, "z": 9}  # the ten words seen once dropped: 3 left, at most 8 // 2
    more = Counter({f"w{i}": 1 for i in range(10)} | {f"v{i}": 2 for i in range(5)} | {"x": 5})
    prune_rarest(more, max_units=8)
    assert dict(more) == {"x": 5}  # count 1, then count 2 dropped, until at most 4 remain
    same = Counter({"a": 1, "b": 1})
    prune_rarest(same, max_units=8)
    assert same == Counter({"a": 1, "b": 1})  # under the cap: untouched


def test_word_cap_bounds_the_counter_and_keeps_frequent_counts_exact():
    texts = _corpus()
    batches = [texts[i : i + 20] for i in range(0, len(texts), 20)]
    exact = count_pretokens(iter(batches))
    capped = count_pretokens(iter(batches), max_units=50)
    assert len(exact) > 400 and len(capped) <= 50  # the unique ids are what grows
    for word in (" the", " cat", " mat", " dog"):
        assert capped[word] == exact[word]


def test_word_cap_not_reached_trains_the_same_merges():
    texts = _corpus(100)
    assert train_bpe(texts, 300, SPECIALS, max_words=10_000) == train_bpe(texts, 300, SPECIALS)
