"""Stage `tokenizer`: train byte-level BPE on the raw corpus and write data/tokenizer/."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, require
from lm.paths import RAW, TOKENIZER


def run(params: Params, raw_dir=RAW, out_dir=TOKENIZER) -> None:
    import time

    import pandas as pd
    from rich.console import Console

    from lm.tokenizer import train_tokenizer

    corpus = require(raw_dir / "corpus.parquet", "lm download")
    texts = pd.read_parquet(corpus, columns=["text"])["text"]
    started = time.perf_counter()
    tok = train_tokenizer(texts, params.tokenizer, progress=True)  # a bar, or a line every 10 s under DVC
    with atomic_dir(out_dir) as tmp:
        tok.save(tmp)
    Console(stderr=True).print(
        f"tokenizer: {len(tok.merges)} merges, vocab {tok.vocab_size} in {time.perf_counter() - started:.1f}s -> {out_dir}"
    )
