"""Brute-force BPE training: the specification that the fast trainer is tested against.

Every step recounts all adjacent pairs over all pre-tokens, picks the most frequent one (ties: the greatest
``(first bytes, second bytes)``), and rewrites every pre-token. Quadratic and slow; only for small corpora.
Pre-tokenization here is deliberately naive too (special tokens cut out, the GPT-2 pattern over each whole
piece), so the tests also check the chunking and unit counting of ``pretokenize.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import regex

from lm.tokenizer.pretokenize import GPT2_PATTERN

_PAT = regex.compile(GPT2_PATTERN)


def reference_pretoken_counts(texts: Iterable[str], special_tokens: list[str]) -> Counter[bytes]:
    """Pre-token counts by the plainest route: cut out specials (longest first), regex each piece."""
    counts: Counter[bytes] = Counter()
    if special_tokens:
        alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
        special = regex.compile(alternatives)
    for text in texts:
        pieces = special.split(text) if special_tokens else [text]
        for piece in pieces:
            counts.update(tok.encode("utf-8") for tok in _PAT.findall(piece))
    return counts


def reference_merges(word_counts: dict[bytes, int], n_merges: int) -> list[tuple[bytes, bytes]]:
    """Learn merges by recounting every pair at every step."""
    words = {tuple(bytes([c]) for c in w): n for w, n in word_counts.items()}
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: dict[tuple[bytes, ...], int] = {}
        for word, n in words.items():
            out: list[bytes] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            key = tuple(out)
            merged[key] = merged.get(key, 0) + n
        words = merged
    return merges


def reference_train_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str]
) -> list[tuple[bytes, bytes]]:
    """The whole of training, brute force: same contract as `lm.tokenizer.train_bpe`."""
    counts = reference_pretoken_counts(texts, special_tokens)
    return reference_merges(counts, vocab_size - 256 - len(special_tokens))
