"""Stage `encode`: tokenize every document once into the memmaps of lm.data.encoded."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, require
from lm.paths import ENCODED, RAW, TOKENIZER


def stream_texts(table, batch_size: int):
    """The corpus' text column, read one parquet batch at a time (memory bounded by the batch)."""
    for batch in table.iter_batches(batch_size=batch_size, columns=["text"]):
        yield from batch.column(0).to_pylist()


def run(params: Params, raw_dir=RAW, tokenizer_dir=TOKENIZER, out_dir=ENCODED) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from rich.console import Console

    from lm.data.encode_corpus import encode_rows, encode_stream
    from lm.data.encoded import Encoded
    from lm.progress import counted, progress
    from lm.tokenizer import Tokenizer

    corpus = require(raw_dir / "corpus.parquet", "lm download")
    require(tokenizer_dir / "special_tokens.json", "lm tokenize")
    tok = Tokenizer.load(tokenizer_dir)
    table = pq.ParquetFile(corpus)
    n_docs = table.metadata.num_rows
    max_len = params.encode.max_len
    with atomic_dir(out_dir) as tmp, progress("encode", n_docs, "documents") as meter:
        texts = counted(stream_texts(table, params.encode.batch_size), meter)
        if params.task in ("clm", "mlm"):  # packed into full windows at training time
            info = encode_stream(texts, n_docs, tok, tmp)
        else:
            info = encode_rows(texts, n_docs, tok, max_len, tmp)
        targets = pd.read_parquet(corpus, columns=["target"])["target"].to_numpy(dtype=np.float32, na_value=np.nan)
        Encoded.write_meta(tmp, task=params.task, layout=info, n_docs=n_docs, max_len=max_len,
                           vocab_size=tok.vocab_size, special_ids=tok.special_ids, tokenizer_hash=tok.hash,
                           targets=targets)
    Console(stderr=True).print(
        f"encode: {n_docs} documents, {info['n_tokens']} tokens ({info['dtype']}, "
        f"{info.get('n_truncated', 0)} truncated at {max_len}) -> {out_dir}"
    )
