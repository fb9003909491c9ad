"""Items and batches over the encoded memmaps: what one training example is for each task.

- classify / mlm: an item is a document row; a batch is trimmed to its longest row (dynamic padding), which
  on short comments saves most of the attention cost of padding to max_len.
- clm: an item is a window of max_len + 1 tokens cut from a run of consecutive documents of the split
  (documents are contiguous in the stream, so a run is one slice of the memmap, copied only when batched).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm.data.encoded import Encoded


@dataclass
class RowItems:
    """Document rows of one split (classify / mlm)."""

    enc: Encoded
    rows: np.ndarray  # int64 document indices

    def __len__(self) -> int:
        return len(self.rows)

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
    """Fixed-length windows over the documents of one split (clm)."""

    enc: Encoded
    starts: np.ndarray  # int64 token offsets of each window
    ends: np.ndarray  # int64 exclusive end of the run the window belongs to
    window: int  # max_len + 1 (inputs and shifted targets)

    @classmethod
    def from_docs(cls, enc: Encoded, docs: np.ndarray, max_len: int) -> WindowItems:
        docs = np.sort(docs)
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        if len(docs):
            breaks = np.flatnonzero(np.diff(docs) != 1) + 1
            for run in np.split(docs, breaks):
                lo, hi = int(enc.offsets[run[0]]), int(enc.offsets[run[-1] + 1])
                if hi - lo < 2:
                    continue
                s = np.arange(lo, hi - 1, max_len, dtype=np.int64)  # stride max_len: each target once
                starts.append(s)
                ends.append(np.full_like(s, hi))
        cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))
        return cls(enc, cat(starts), cat(ends), max_len + 1)

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, items: np.ndarray) -> dict[str, torch.Tensor]:
        n = len(items)
        block = np.full((n, self.window), self.enc.pad_id, dtype=np.int64)
        valid = np.zeros((n, self.window), dtype=bool)
        for j, i in enumerate(items):
            lo = int(self.starts[i])
            hi = min(lo + self.window, int(self.ends[i]))
            block[j, : hi - lo] = self.enc.tokens[lo:hi]
            valid[j, : hi - lo] = True
        ids = torch.from_numpy(block)
        valid_t = torch.from_numpy(valid)
        return {
            "input_ids": ids[:, :-1],
            "attention_mask": valid_t[:, :-1],
            "labels": torch.where(valid_t[:, 1:], ids[:, 1:], torch.full_like(ids[:, 1:], -100)),
        }
