"""GPT-2 pre-tokenization and pre-token counting, the first half of BPE training.

BPE never merges across a pre-token boundary, so training only needs the multiset of pre-tokens:
``{" the": 51234, "ing": 2047, ...}``. This module produces that multiset, fast and in parallel:

1. Special tokens are cut out of each text (the longest wins where several match at one place); the pieces
   between them are pre-tokenized separately and the special tokens themselves are not counted.
2. A piece is cut further at *safe points*: positions ``p`` with a non-whitespace character at ``p - 1``
   and a whitespace character at ``p``. The GPT-2 pattern always has a match boundary there (every
   alternative that consumes whitespace consumes only whitespace, apart from one leading space), and no
   alternative looks past such a point, so the pieces on either side pre-tokenize exactly as they would
   inside the whole text. This is what makes the counts independent of how the text was chunked and of
   the number of worker processes.
3. Counting uses the same property once more: a text is a sequence of *units* ``\\s*\\S+`` (whitespace
   then non-whitespace), each cut at a safe point, so we count units with one cheap regex (stdlib ``re``,
   cheaper than the GPT-2 pattern), then run the GPT-2 pattern once per *distinct* unit.

"Whitespace" is exactly the ``\\s`` of the ``regex`` module (Unicode White_Space, 25 code points), which
is also what the GPT-2 pattern uses; Python's ``str.isspace`` differs (it includes U+001C..U+001F).
"""

from __future__ import annotations

import multiprocessing
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor

import regex

from lm.errors import LmError

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Unicode White_Space: the code points matched by `\s` in the `regex` module (checked by a test).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_WS_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)

_PIECE_RE = regex.compile(GPT2_PATTERN)
# A unit is whitespace then non-whitespace (or trailing whitespace at the end of the text).
_UNIT_RE = re.compile(f"[{_WS_CLASS}]*[^{_WS_CLASS}]+|[{_WS_CLASS}]+")
# A safe cut point: non-whitespace before, whitespace at the position.
_SAFE_CUT_RE = re.compile(f"(?<=[^{_WS_CLASS}])[{_WS_CLASS}]")
# Cut points for streaming (see `stream_cuts`): the safe cut points above, and ASCII letter -> ASCII digit or
# punctuation, ASCII digit -> ASCII letter or punctuation (ASCII only: its classes are the same in every
# Unicode version, so tiktoken's regex engine agrees with ours on them).
_PUNCT = r"!-/:-@\[-`{-~"
_STREAM_CUT_RE = re.compile(
    f"(?<=[^{_WS_CLASS}])(?=[{_WS_CLASS}])|(?<=[A-Za-z])(?=[0-9{_PUNCT}])|(?<=[0-9])(?=[A-Za-z{_PUNCT}])"
)

CHUNK_CHARS = 1 << 20  # characters per unit of work: large enough to amortise IPC, small enough for memory


def pretokenize(text: str) -> list[str]:
    """Split text (containing no special tokens) into GPT-2 pre-tokens:
    ``"Hi  you" -> ["Hi", " ", " you"]``."""
    return _PIECE_RE.findall(text)


def special_splitter(special_tokens: Sequence[str]) -> re.Pattern[str] | None:
    """A pattern that finds special tokens, the longest first where several match at one place."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return re.compile("|".join(re.escape(s) for s in ordered))


def split_special(text: str, splitter: re.Pattern[str] | None) -> list[str]:
    """The pieces of text between special tokens (the special tokens themselves dropped)."""
    return [text] if splitter is None else splitter.split(text)


def safe_cut(text: str, start: int) -> int:
    """The first safe cut point at or after `start` (see module docstring), or len(text) if none."""
    m = _SAFE_CUT_RE.search(text, max(start, 1))
    return m.start() if m else len(text)


def stream_cuts(text: str, size: int, special_tokens: Sequence[str] = ()) -> list[int]:
    """Positions about `size` apart where text can be cut without changing its token ids, whatever follows it.

    Streaming encodes a text in parts, so a cut must fall where the GPT-2 pattern has a match boundary that
    no later text can move: a safe cut point (module docstring), or a letter followed by a digit or
    punctuation, or a digit followed by a letter or punctuation (every alternative that matches a letter
    or digit stops before the other classes; a contraction like ``'ll`` ends at a letter). No cut falls
    inside an occurrence of a special token, nor so close to the end that a special token completed by
    the next text could span it. Whitespace runs are never cut (``\\s+(?!\\S)`` looks past them), so memory
    grows with the longest stretch without a cut point (a whitespace run, a word and its punctuation), not
    with the text.
    """
    longest = max((len(s) for s in special_tokens), default=0)
    end = len(text) - longest  # stop short of the end: text still to come may complete a special token
    cuts: list[int] = []
    pos = size
    while pos < end:
        m = _STREAM_CUT_RE.search(text, pos, end)
        if m is None:
            break
        p = m.start()
        if any(text.find(s, max(0, p - len(s) + 1), p + len(s) - 1) >= 0 for s in special_tokens):
            pos = p + 1  # inside a special token
            continue
        cuts.append(p)
        pos = p + size
    return cuts


def cut_pieces(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut one special-free text into pieces of about `size` characters at safe points."""
    start = 0
    while len(text) - start > size:
        cut = safe_cut(text, start + size)
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def count_units(pieces: Iterable[str], into: Counter[str] | None = None) -> Counter[str]:
    """Count the whitespace+word units of special-free texts (the cheap first pass)."""
    units: Counter[str] = Counter() if into is None else into
    for piece in pieces:
        units.update(_UNIT_RE.findall(piece))
    return units


def units_to_pretokens(units: Counter[str] | dict[str, int]) -> dict[str, int]:
    """Turn unit counts into pre-token counts by pre-tokenizing each distinct unit once."""
    counts: dict[str, int] = {}
    get = counts.get
    findall = _PIECE_RE.findall
    for unit, n in units.items():
        for tok in findall(unit):
            counts[tok] = get(tok, 0) + n
    return counts


def _utf8_len(pieces: list[str]) -> int:
    return sum(len(p.encode("utf-8", "surrogatepass")) for p in pieces)


def count_chunk(pieces: list[str]) -> tuple[dict[str, int], int]:
    """Worker entry point: unit counts of special-free pieces, and the UTF-8 bytes they hold."""
    return dict(count_units(pieces)), _utf8_len(pieces)


def iter_work(
    texts: Iterable[str], special_tokens: Sequence[str], size: int = CHUNK_CHARS
) -> Iterator[list[str]]:
    """Batch texts into lists of special-free pieces of about `size` characters in total.

    Each text is pre-tokenized on its own (a text boundary is a pre-token boundary), special tokens are
    cut out, and long pieces are cut at safe points; none of this changes the resulting counts.
    """
    splitter = special_splitter(special_tokens)
    batch: list[str] = []
    filled = 0
    for text in texts:
        if not isinstance(text, str):
            raise LmError(f"tokenizer training expects str texts, got {type(text).__name__}")
        for segment in split_special(text, splitter):
            for piece in cut_pieces(segment, size):
                batch.append(piece)
                filled += len(piece)
                if filled >= size:
                    yield batch
                    batch, filled = [], 0
    if batch:
        yield batch


Progress = Callable[[int], None]


def prune_rarest(units: Counter[str], max_units: int | None) -> None:
    """Bounded memory on corpora whose distinct words keep growing (numbers, handles, URLs): once `units`
    holds more than max_units distinct words, the rarest are dropped (count 1, then 2, ...) until at most half
    remain. Frequent words keep exact counts (they are never dropped); a dropped word that comes back counts
    again from there, so only words too rare to win a merge are approximate. None: exact counts, unbounded."""
    if max_units is None or len(units) <= max_units:
        return
    threshold = 1
    while len(units) > max_units // 2:
        for unit in [u for u, n in units.items() if n <= threshold]:
            del units[unit]
        threshold += 1


def count_pretokens(
    work: Iterable[list[str]],
    *,
    workers: int = 1,
    on_bytes: Progress | None = None,
    max_units: int | None = None,
) -> dict[str, int]:
    """Pre-token counts over batches of special-free pieces, counted in `workers` processes.

    Workers count units; the parent sums them and pre-tokenizes each distinct unit once. Counts are exact
    integers summed over batches, so the result depends neither on `workers` nor on the order in which
    batches finish. At most 2 * workers batches are in flight (bounded memory), and at most `max_units`
    distinct units are held (`prune_rarest`; the counts are exact while the corpus stays under it).
    """
    units: Counter[str] = Counter()
    if workers <= 1:
        for batch in work:
            count_units(batch, into=units)
            prune_rarest(units, max_units)
            if on_bytes is not None:
                on_bytes(_utf8_len(batch))
        return units_to_pretokens(units)

    def absorb(counts: dict[str, int], nbytes: int) -> None:
        get = units.get
        for unit, n in counts.items():
            units[unit] = get(unit, 0) + n
        prune_rarest(units, max_units)
        if on_bytes is not None:
            on_bytes(nbytes)

    # fork: workers start in milliseconds and need no `if __name__ == "__main__"` guard in the caller's
    # script; they only run regex/str code, so inheriting the parent's threads is harmless.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Future[tuple[dict[str, int], int]]] = deque()
        for batch in work:
            pending.append(pool.submit(count_chunk, batch))
            while len(pending) >= 2 * workers:
                absorb(*pending.popleft().result())
        while pending:
            absorb(*pending.popleft().result())
    return units_to_pretokens(units)
