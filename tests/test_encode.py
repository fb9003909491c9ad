"""The encode stage's memmaps hold exactly tok.encode of every document, in the documented layout."""

from __future__ import annotations

import numpy as np

from lm.data.encode_corpus import encode_rows, encode_stream
from lm.data.encoded import Encoded, token_dtype
from lm.tokenizer import Tokenizer, train_bpe

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]
TEXTS = ["Hello world, hello!", "", "naïve café — 数字 123", "a " * 40, "literal <|pad|> in text"]


def _tok() -> Tokenizer:
    return Tokenizer(train_bpe(TEXTS * 3, 300, SPECIALS), SPECIALS)


def _meta(tok, task, info, n):
    return {
        "task": task,
        **info,
        "n_docs": n,
        "max_len": 16,
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids,
        "tokenizer_hash": tok.hash,
    }


def test_rows_layout(tmp_path):
    import json

    tok = _tok()
    info = encode_rows(iter(TEXTS), len(TEXTS), tok, 16, tmp_path)
    np.save(tmp_path / "targets.npy", np.zeros(len(TEXTS), dtype=np.float32))
    (tmp_path / "meta.json").write_text(json.dumps(_meta(tok, "classify", info, len(TEXTS))))
    enc = Encoded.open(tmp_path)
    assert enc.tokens.dtype == token_dtype(tok.vocab_size) == np.uint16
    for i, text in enumerate(TEXTS):
        expected = ([tok.cls_id] + tok.encode(text, disallowed="as_text"))[:16]
        assert enc.lengths[i] == len(expected)
        assert enc.tokens[i, : len(expected)].tolist() == expected
        assert (enc.tokens[i, len(expected) :] == tok.pad_id).all()
    assert info["n_truncated"] == 1  # the long "a a a ..." row
    assert tok.pad_id not in enc.tokens[4, : enc.lengths[4]].tolist()  # special text is not a special id


def test_stream_layout(tmp_path):
    tok = _tok()
    info = encode_stream(iter(TEXTS), len(TEXTS), tok, tmp_path, chunk_tokens=7)  # several flushes
    flat = np.fromfile(tmp_path / "tokens.bin", dtype=info["dtype"])
    offsets = np.load(tmp_path / "offsets.npy")
    assert len(flat) == info["n_tokens"] == offsets[-1]
    for i, text in enumerate(TEXTS):
        doc = flat[offsets[i] : offsets[i + 1]].tolist()
        assert doc == tok.encode(text, disallowed="as_text") + [tok.eot_id]
        assert tok.decode(doc[:-1]) == text
