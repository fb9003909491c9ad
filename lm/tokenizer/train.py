"""Byte-level BPE training: learn merges from pre-token counts with incremental pair-count updates.

The rule (``reference.py`` spells it out as a brute-force loop, which the tests compare against):

* start from the 256 single bytes; each pre-token is a sequence of byte tokens, weighted by its count;
* each step merges the most frequent adjacent pair (ties: the lexicographically greatest pair, comparing
  the first token's bytes, then the second's), left to right and non-overlapping inside every pre-token;
* stop after ``vocab_size - 256 - len(special_tokens)`` merges, or earlier if no pair is left.

Worked example (``tests/test_tokenizer.py`` checks it): pre-tokens ``{"low": 5, "lower": 2, "newest": 6,
"widest": 3}``. Pair counts: ``es`` 9, ``st`` 9, ``we`` 8, ``lo`` 7, ``ow`` 7, ``ne`` 6, ``ew`` 6, ...;
``es`` and ``st`` tie and ``(b"s", b"t") > (b"e", b"s")``, so the merges go ``s t``, ``e st`` (9),
``o w`` (7, ties with ``l o``), ``l ow`` (7), ``w est`` (6; ``we`` lost its ``e``, and ``w`` beats ``n``
and ``e`` in the three-way tie), ``n e``, ``ne west``, ``w i``, ``wi d``, ``wid est``, ``low e``,
``lowe r``, and then no pair is left.

Speed comes from never recounting: ``where[pair]`` lists the words that contain a pair, so a merge
touches only those words (each held as a str of one character per token, so that applying a merge is one
``str.replace``), and only the pairs around each merged occurrence change count; a max-heap with lazy
invalidation finds the next pair. Only pairs that
contain the new token can gain counts, so only they are pushed; an entry popped with a stale (too high)
count is pushed back with the current one.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from lm.errors import LmError
from lm.tokenizer.pretokenize import count_pretokens, iter_work

if TYPE_CHECKING:
    from lm.config import TokenizerConfig
    from lm.tokenizer.encoding import Tokenizer

Merge = tuple[bytes, bytes]

# Heap keys order pairs by *descending* bytes: each token's bytes are mapped b -> 255 - b, then a
# terminator (U+0100) that sorts after every mapped byte, so that a prefix sorts after its extensions.
_INVERT = bytes(range(255, -1, -1))
_END = "\u0100"


def _desc_key(token: bytes) -> str:
    return token.translate(_INVERT).decode("latin-1") + _END


def check_vocab_args(vocab_size: int, special_tokens: Sequence[str]) -> int:
    """Validate the training arguments; return the number of merges to learn."""
    if len(set(special_tokens)) != len(special_tokens):
        raise LmError(f"tokenizer special_tokens has duplicates: {list(special_tokens)}")
    if any(not isinstance(s, str) or not s for s in special_tokens):
        raise LmError("tokenizer special_tokens must be non-empty strings")
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise LmError(
            f"tokenizer vocab_size={vocab_size} is smaller than 256 bytes + "
            f"{len(special_tokens)} special tokens"
        )
    return n_merges


def learn_merges(
    word_counts: dict[bytes, int] | dict[str, int],
    n_merges: int,
    *,
    on_merge: Callable[[int], None] | None = None,
) -> list[Merge]:
    """Learn up to `n_merges` merges from pre-token counts (str keys are UTF-8 encoded).

    Words are held as str with one character per token (``chr(id)``), so applying a merge is one C-level
    ``str.replace`` (left to right, non-overlapping: exactly BPE's rule) and pairs are 2-character strings.
    """
    vocab: list[bytes] = [bytes([i]) for i in range(256)]
    desc: list[str] = [_desc_key(t) for t in vocab]
    words, freqs = _words_as_strings(word_counts)
    pair_counts, where = _count_pairs(words, freqs)
    heap = [(-n, desc[ord(p[0])], desc[ord(p[1])], p) for p, n in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Merge] = []
    while len(merges) < n_merges:
        pair = _pop_most_frequent(heap, pair_counts)
        if pair is None:
            break
        new = len(vocab)
        a, b = ord(pair[0]), ord(pair[1])
        vocab.append(vocab[a] + vocab[b])
        desc.append(_desc_key(vocab[new]))
        merges.append((vocab[a], vocab[b]))
        touched = _replace_pair(pair, chr(new), words, freqs, pair_counts, where)
        del pair_counts[pair]
        for p in touched:  # only pairs with the new token gained counts
            heapq.heappush(heap, (-pair_counts[p], desc[ord(p[0])], desc[ord(p[1])], p))
        if on_merge is not None:
            on_merge(len(merges))
    return merges


def _words_as_strings(word_counts: dict[bytes, int] | dict[str, int]) -> tuple[list[str], list[int]]:
    """Words of two or more bytes with a positive count, each as a str of one character per byte
    (byte b -> chr(b) == token id b), and their counts."""
    words: list[str] = []
    freqs: list[int] = []
    for word, freq in word_counts.items():
        data = word.encode("utf-8", "surrogatepass") if isinstance(word, str) else word
        if len(data) >= 2 and freq > 0:
            words.append(data.decode("latin-1"))
            freqs.append(freq)
    return words, freqs


def _count_pairs(
    words: list[str], freqs: list[int]
) -> tuple[defaultdict[str, int], defaultdict[str, set[int]]]:
    """Weighted count of every adjacent pair, and the indices of the words that contain it."""
    pair_counts: defaultdict[str, int] = defaultdict(int)
    where: defaultdict[str, set[int]] = defaultdict(set)
    for idx, (word, freq) in enumerate(zip(words, freqs)):
        for i in range(len(word) - 1):
            pair = word[i : i + 2]
            pair_counts[pair] += freq
            where[pair].add(idx)
    return pair_counts, where


def _pop_most_frequent(heap: list[tuple[int, str, str, str]], pair_counts: dict[str, int]) -> str | None:
    """Pop the pair to merge next (highest count, ties broken by the heap's descending-bytes keys); None when
    no pair is left. Entries are invalidated lazily: one whose count went down is pushed back with the
    current count, one for a pair no longer present (or pushed again since) is dropped."""
    while heap:
        neg, da, db, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if current == -neg:
            return pair
        if 0 < current < -neg:  # stale high entry: requeue with the true count
            heapq.heappush(heap, (-current, da, db, pair))
        # stale low entries are dropped: a fresher one exists
    return None


def _replace_pair(
    pair: str,
    token: str,
    words: list[str],
    freqs: list[int],
    pair_counts: defaultdict[str, int],
    where: defaultdict[str, set[int]],
) -> set[str]:
    """Replace `pair` by `token` in every word containing it, updating the counts and the index of the pairs
    around each merged occurrence; return the pairs that gained counts (all contain `token`)."""
    touched: set[str] = set()
    for idx in where.pop(pair):
        old = words[idx]
        if pair not in old:
            continue  # index entry left over from an earlier merge of this word
        out = old.replace(pair, token)
        words[idx] = out
        freq = freqs[idx]
        n_old, n_out = len(old), len(out)
        # Only pairs overlapping a merged occurrence change: occurrence k sits at j in `out` and
        # at i = j + k in `old`. Neighbouring occurrences share the pair between them; count it once.
        prev_end = -1  # index in `old` just after the previous occurrence
        prev_j = -2
        k = 0
        j = out.find(token)
        while j >= 0:
            i = j + k
            if i > 0 and i != prev_end:
                pair_counts[old[i - 1 : i + 1]] -= freq
            if i + 2 < n_old:
                pair_counts[old[i + 1 : i + 3]] -= freq
            if j > 0 and j != prev_j + 1:
                p = out[j - 1 : j + 1]
                pair_counts[p] += freq
                where[p].add(idx)
                touched.add(p)
            if j + 1 < n_out:
                p = out[j : j + 2]
                pair_counts[p] += freq
                where[p].add(idx)
                touched.add(p)
            prev_end, prev_j = i + 2, j
            k += 1
            j = out.find(token, j + 1)
    return touched


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: list[str],
    *,
    workers: int = 1,
    progress: bool = False,
    max_words: int | None = None,
) -> list[Merge]:
    """Train byte-level BPE on texts; return the merges in order (token id 256 + i is merge i).

    Each text is pre-tokenized on its own with the GPT-2 pattern after cutting out special tokens, so no
    merge crosses a text, special-token or pre-token boundary. The result is deterministic and the same
    for any `workers` (processes used for pre-tokenization).
    """
    n_merges = check_vocab_args(vocab_size, special_tokens)
    return _train(
        iter_work(texts, special_tokens),
        n_merges,
        workers=workers,
        progress=progress,
        total_bytes=None,
        max_words=max_words,
    )


def _train(
    work: Iterable[list[str]],
    n_merges: int,
    *,
    workers: int,
    progress: bool,
    total_bytes: int | None,
    max_words: int | None = None,
) -> list[Merge]:
    if workers < 1:
        raise LmError(f"tokenizer workers must be >= 1, got {workers}")
    if not progress:
        return learn_merges(count_pretokens(work, workers=workers, max_units=max_words), n_merges)

    from lm.progress import progress as meter

    with meter("tokenizer: pre-tokenizing", total_bytes, "bytes") as bar:
        counts = count_pretokens(work, workers=workers, on_bytes=bar.advance, max_units=max_words)
    with meter("tokenizer: merging", n_merges, "merges") as bar:
        step = max(1, n_merges // 200)

        def on_merge(done: int) -> None:
            if done % step == 0 or done == n_merges:
                bar.update(done)

        merges = learn_merges(counts, n_merges, on_merge=on_merge)
    return merges


def limit_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterable[str]:
    """The texts up to `max_bytes` UTF-8 bytes in total (the last one cut at a character boundary)."""
    if max_bytes is None:
        yield from texts
        return
    left = max_bytes
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        if len(data) >= left:
            yield data[:left].decode("utf-8", "ignore")
            return
        left -= len(data)
        yield text


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, *, progress: bool = False) -> Tokenizer:
    """Train a `Tokenizer` as params.yaml's `tokenizer` section says (vocab size, specials, byte cap, word
    cap, workers)."""
    from lm.tokenizer.encoding import Tokenizer

    merges = train_bpe(
        limit_bytes(texts, cfg.max_train_bytes),
        cfg.vocab_size,
        list(cfg.special_tokens),
        workers=cfg.workers,
        progress=progress,
        max_words=cfg.max_words,
    )
    return Tokenizer(merges, cfg.special_tokens)
