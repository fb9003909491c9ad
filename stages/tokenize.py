"""Stage `tokenizer`: train byte-level BPE on the raw corpus and write data/tokenizer/."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, require
from lm.paths import RAW, TOKENIZER


def training_texts(texts, max_bytes: int | None):
    """The corpus texts, stopping once max_bytes of UTF-8 have been yielded (None: all)."""
    seen = 0
    for text in texts:
        yield text
        seen += len(text.encode("utf-8"))
        if max_bytes is not None and seen >= max_bytes:
            return


def run(params: Params, raw_dir=RAW, out_dir=TOKENIZER) -> None:
    import time

    import pandas as pd
    from rich.console import Console

    from lm.tokenizer import Tokenizer, train_bpe

    corpus = require(raw_dir / "corpus.parquet", "lm download")
    texts = pd.read_parquet(corpus, columns=["text"])["text"]
    cfg = params.tokenizer
    started = time.perf_counter()
    merges = train_bpe(
        training_texts(texts, cfg.max_train_bytes), cfg.vocab_size, cfg.special_tokens,
        workers=cfg.workers, progress=False,
    )
    tok = Tokenizer(merges, cfg.special_tokens)
    with atomic_dir(out_dir) as tmp:
        tok.save(tmp)
    Console(stderr=True).print(
        f"tokenizer: {len(merges)} merges, vocab {tok.vocab_size} in {time.perf_counter() - started:.1f}s -> {out_dir}"
    )
