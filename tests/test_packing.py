"""Packing for mlm and clm: the documents of a split, joined by <|endoftext|>, are cut into full windows in
which every token of the split appears exactly once (as an mlm input, or as a clm target), whatever the
grid offset of the epoch; no token of another split leaks in, and the encode stage keeps every token."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import SPECIALS, tiny_params, write_fake_encoded

from lm.config import parse_params
from lm.data.batches import make_items
from lm.data.encoded import Encoded
from lm.data.split import load_split
from lm.tokenizer import Tokenizer, train_bpe
from stages import encode

MAX_LEN = 16


def _split_tokens(enc: Encoded, docs: np.ndarray) -> Counter:
    """(stream position -> token) of every token of the given documents: the reference multiset."""
    return Counter({p: int(enc.tokens[p]) for d in docs for p in range(enc.offsets[d], enc.offsets[d + 1])})


def _covered(items, task: str) -> Counter:
    """Stream positions each window contributes (mlm: its real input tokens after <|cls|>; clm: its
    labels)."""
    seen: Counter = Counter()
    batch = items.batch(np.arange(len(items)))
    for j in range(len(items)):
        lo = int(items.starts[j])
        if task == "mlm":
            ids = batch["input_ids"][j]
            assert int(ids[0]) == SPECIALS["<|cls|>"]
            n = int(batch["attention_mask"][j].sum()) - 1
            assert ids[1 : 1 + n].tolist() == [int(t) for t in items.enc.tokens[lo : lo + n]]
            positions = range(lo, lo + n)
        else:
            n = int((batch["labels"][j] != -100).sum())
            assert batch["labels"][j, :n].tolist() == [int(t) for t in items.enc.tokens[lo + 1 : lo + 1 + n]]
            positions = range(lo + 1, lo + 1 + n)
        for p in positions:
            seen[p] += 1
    return seen


@pytest.mark.parametrize("task", ["mlm", "clm"])
@pytest.mark.parametrize("offset", [0, 1, 5, MAX_LEN - 2])
def test_packing_keeps_every_token_of_the_split_exactly_once(tmp_path, task, offset):
    write_fake_encoded(tmp_path, task, n_docs=90, max_len=MAX_LEN)
    enc = Encoded.open(tmp_path / "data/encoded")
    for part, docs in load_split(tmp_path / "data/split").items():
        items = make_items(enc, docs, task, MAX_LEN)
        items = items.with_offset(offset % items.stride)
        seen = _covered(items, task)
        assert set(seen.values()) == {1}, f"{part}: a token covered twice"
        expected = set(_split_tokens(enc, docs))
        if task == "clm":  # the first token of each run of consecutive documents is context, never a target
            expected -= {int(lo) for lo in items.run_lo}
        assert set(seen) == expected, f"{part}: tokens missing or from another split"


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_packing_fills_windows(tmp_path, task):
    """Windows are full except at the end of a run (and the head window of a shifted grid)."""
    write_fake_encoded(tmp_path, task, n_docs=90, max_len=MAX_LEN)
    enc = Encoded.open(tmp_path / "data/encoded")
    items = make_items(enc, load_split(tmp_path / "data/split")["train"], task, MAX_LEN)
    batch = items.batch(np.arange(len(items)))
    assert batch["input_ids"].shape[1] == MAX_LEN
    real = batch["attention_mask"].sum(1).numpy()
    full = int((real == MAX_LEN).sum())
    n_runs = len(items.run_lo)
    assert full >= len(items) - n_runs  # at most one partial window per run
    mean_docs_tokens = np.diff(enc.offsets).mean()
    assert mean_docs_tokens < MAX_LEN and full > 0  # several short documents share one window


def test_packing_mlm_encode_keeps_every_token(tmp_path):
    """The encode stage writes mlm as the packed stream: nothing truncated, however long a document."""
    texts = ["short one", "word " * 400, "another text"]
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"id": [0, 1, 2], "text": texts, "target": [np.nan] * 3}).to_parquet(raw / "corpus.parquet")
    tok = Tokenizer(train_bpe(texts, 300, list(SPECIALS)), list(SPECIALS))
    tok.save(tmp_path / "tokenizer")
    encode.run(
        parse_params(tiny_params(task="mlm")),
        raw_dir=raw,
        tokenizer_dir=tmp_path / "tokenizer",
        out_dir=tmp_path / "encoded",
    )
    meta = json.loads((tmp_path / "encoded" / "meta.json").read_text())
    assert meta["layout"] == "stream" and meta["n_truncated"] == 0
    expected = sum(len(tok.encode(t)) + 1 for t in texts)
    assert meta["n_tokens"] == expected > 400
