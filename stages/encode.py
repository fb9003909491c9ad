"""Stage `encode`: tokenize every document once into the memmaps of lm.data.encoded."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, atomic_write_json, require
from lm.paths import ENCODED, RAW, TOKENIZER


def run(params: Params, raw_dir=RAW, tokenizer_dir=TOKENIZER, out_dir=ENCODED) -> None:
    import numpy as np
    import pandas as pd
    from rich.console import Console

    from lm.data.encode_corpus import encode_rows, encode_stream
    from lm.tokenizer import Tokenizer

    corpus = require(raw_dir / "corpus.parquet", "lm download")
    require(tokenizer_dir / "special_tokens.json", "lm tokenize")
    tok = Tokenizer.load(tokenizer_dir)
    frame = pd.read_parquet(corpus, columns=["text", "target"])
    texts = frame["text"].tolist()
    max_len = params.encode.max_len
    with atomic_dir(out_dir) as tmp:
        if params.task == "clm":
            info = encode_stream(texts, len(texts), tok, tmp)
        else:
            info = encode_rows(texts, len(texts), tok, max_len, tmp)
        np.save(tmp / "targets.npy", frame["target"].to_numpy(dtype=np.float32, na_value=np.nan))
        meta = {
            "task": params.task,
            "layout": "stream" if params.task == "clm" else "rows",
            **info,
            "n_docs": len(texts),
            "max_len": max_len,
            "vocab_size": tok.vocab_size,
            "special_ids": tok.special_ids,
            "tokenizer_hash": tok.hash,
        }
        atomic_write_json(tmp / "meta.json", meta)
    Console(stderr=True).print(
        f"encode: {len(texts)} documents, {info['n_tokens']} tokens ({info['dtype']}, "
        f"{info.get('n_truncated', 0)} truncated at {max_len}) -> {out_dir}"
    )
