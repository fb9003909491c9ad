"""Items and batches over the encoded memmaps: what one training example is for each task.

- classify: an item is a document row; a batch is trimmed to its longest row (dynamic padding), which
  on short comments saves most of the attention cost of padding to max_len (and with train.bucket_by_length
  the training batches hold rows of similar length: lm.train.stream.bucket_order).
- clm / mlm: an item is a packed window cut from a run of consecutive documents of the split (documents
  are contiguous in the stream, so a run is one slice of the memmap, copied only when batched); the window
  grid can be shifted per epoch (WindowItems.with_offset) without dropping or repeating targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm.data.encoded import Encoded
from lm.data.masking import IGNORE_INDEX
from lm.errors import LmError


def _role(enc: Encoded, role: str) -> int:
    value = enc.roles.get(role)
    if value is None:
        raise LmError(
            f"{enc.root}: the tokenizer has no {role} token, which task={enc.task} needs "
            "(tokenizer.pretrained)"
        )
    return int(value)


def doc_runs(enc: Encoded, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) token offsets of each run of consecutive documents among `docs` in the stream layout: a run
    is one contiguous slice of the memmap."""
    docs = np.sort(np.asarray(docs, dtype=np.int64))
    if not len(docs):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(docs) != 1) + 1
    first = np.concatenate([[0], breaks])
    last = np.concatenate([breaks - 1, [len(docs) - 1]])
    return (
        np.asarray(enc.offsets[docs[first]], dtype=np.int64),
        np.asarray(enc.offsets[docs[last] + 1], dtype=np.int64),
    )


@dataclass
class RowItems:
    """Document rows of one split (classify)."""

    enc: Encoded
    rows: np.ndarray  # int64 document indices

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> np.ndarray:
        """(n_items,) real tokens of each item (the width a batch of it alone would have)."""
        return np.asarray(self.enc.lengths[self.rows], dtype=np.int64)

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        rows = self.rows[items]
        order = np.argsort(rows)  # memmap reads are fastest in file order; restore order after
        sorted_rows = rows[order]
        lengths = self.enc.lengths[sorted_rows]
        width = int(lengths.max())
        block = np.asarray(self.enc.tokens[sorted_rows, :width], dtype=np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        block, lengths = block[inverse], lengths[inverse]
        ids = torch.from_numpy(block)
        mask = torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]
        out = {"input_ids": ids, "attention_mask": mask, "rows": torch.from_numpy(rows)}
        if self.enc.targets is not None:
            out["targets"] = torch.from_numpy(self.enc.targets[rows].astype(np.float32))
        return out


@dataclass
class WindowItems:
    """Packed windows over the documents of one split (clm and mlm): documents joined by <|endoftext|>, cut
    into full windows, so no token is thrown away and no compute goes to padding.

    The split's documents form runs of consecutive documents (one contiguous slice of the stream each). A
    run is cut on a grid of stride `stride` shifted by `offset`: a head window covering the run's first
    `offset` targets, then full windows from there on. Every target token of the run is covered exactly
    once whatever the offset; training draws a new offset every epoch so the model sees new context
    boundaries, and evaluation uses offset 0.

    - clm (shift 1): a window reads max_len + 1 tokens; inputs are its first max_len, labels the next tokens.
    - mlm (shift 0, prefix <|cls|>): a window reads max_len - 1 tokens and is fed as <|cls|> + those tokens
      (as BERT starts every sequence with [CLS], so a classifier fine-tuned from it finds a trained
      <|cls|>); `rows` is the window's start offset in the stream, the key of its masks.
    """

    enc: Encoded
    starts: np.ndarray  # int64 token offset of each window
    # int64 exclusive end of the tokens the window may read (its run's end, or its segment's)
    ends: np.ndarray
    window: int  # tokens read from the stream per window
    run_lo: np.ndarray | None = None  # int64 start of each run (kept to re-cut the grid)
    run_hi: np.ndarray | None = None  # int64 exclusive end of each run
    shift: int = 1  # 1: next-token inputs/labels (clm); 0: the window itself is the input (mlm)
    prefix_id: int | None = None  # a token put before every window (mlm: <|cls|>)

    @property
    def stride(self) -> int:
        """Targets per full window: the grid step."""
        return self.window - self.shift

    @classmethod
    def from_docs(
        cls, enc: Encoded, docs: np.ndarray, max_len: int, offset: int = 0, *, task: str = "clm"
    ) -> WindowItems:
        if task == "clm":
            window, shift, prefix = max_len + 1, 1, None
        else:
            window, shift, prefix = max_len - 1, 0, _role(enc, "cls")
        lo, hi = doc_runs(enc, docs)
        keep = hi - lo >= 1 + shift  # a clm run needs one input and one target
        lo, hi = lo[keep], hi[keep]
        return cls(enc, lo, hi, window, lo, hi, shift, prefix).with_offset(offset)

    def with_offset(self, offset: int) -> WindowItems:
        """The same runs cut on a grid shifted by `offset` tokens (0 <= offset < stride)."""
        L = self.stride
        if not 0 <= offset < L:
            raise ValueError(f"window offset {offset} outside [0, {L})")
        lo, hi = self.run_lo, self.run_hi
        n = hi - lo - self.shift  # targets per run
        shift = np.where(
            (offset > 0) & (offset < n), offset, 0
        )  # (R,) runs shorter than the offset stay whole
        counts = -(-(n - shift) // L)  # full-grid windows per run (ceil)
        run_of = np.repeat(np.arange(len(lo)), counts)
        k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = np.concatenate([lo[run_of] + shift[run_of] + k * L, lo[shift > 0]])
        head_end = lo + shift + self.shift  # the head window stops at its last target
        ends = np.concatenate([hi[run_of], head_end[shift > 0]])
        order = np.argsort(starts, kind="stable")  # stream order: memmap reads stay sequential
        return WindowItems(
            self.enc, starts[order], ends[order], self.window, lo, hi, self.shift, self.prefix_id
        )

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        n = len(items)
        p = 0 if self.prefix_id is None else 1
        block = np.full((n, p + self.window), self.enc.pad_id, dtype=np.int64)
        valid = np.zeros((n, p + self.window), dtype=bool)
        if p:
            block[:, 0] = self.prefix_id
        for j, i in enumerate(items):
            lo = int(self.starts[i])
            hi = min(lo + self.window, int(self.ends[i]))
            block[j, p : p + hi - lo] = self.enc.tokens[lo:hi]
            valid[j, : p + hi - lo] = True
        ids = torch.from_numpy(block)
        valid_t = torch.from_numpy(valid)
        if self.shift == 0:
            return {
                "input_ids": ids,
                "attention_mask": valid_t,
                "rows": torch.from_numpy(
                    np.asarray(self.starts[np.asarray(items, dtype=np.int64)], dtype=np.int64)
                ),
            }
        return {
            "input_ids": ids[:, :-1],
            "attention_mask": valid_t[:, :-1],
            "labels": torch.where(valid_t[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], IGNORE_INDEX)),
        }


def make_items(enc: Encoded, rows: np.ndarray, task: str, max_len: int) -> RowItems | WindowItems:
    """The items of one split for `task`: document rows to classify, or packed windows for a language
    model."""
    if task in ("clm", "mlm"):
        return WindowItems.from_docs(enc, rows, max_len, task=task)
    return RowItems(enc, rows)
