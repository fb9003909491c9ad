"""Stage `tokenizer`: train byte-level BPE on the raw corpus and write data/tokenizer/, or adopt the
pretrained tokenizer `tokenizer.pretrained` names (its files and roles are written there; nothing is trained).

The texts stream from the corpus shards (one in memory at a time); tokenizer.max_train_bytes takes a sample of
that many bytes spread over every shard (lm.data.raw.RawCorpus.sample_texts)."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir
from lm.paths import RAW, TOKENIZER


def run(params: Params, raw_dir=RAW, out_dir=TOKENIZER) -> None:
    import time

    from rich.console import Console

    from lm.data.raw import RawCorpus
    from lm.tokenizer import train_tokenizer

    if params.tokenizer.pretrained:
        from lm.tokenizer.pretrained import adopt, save_adopted

        tok = adopt(params.tokenizer.pretrained)
        with atomic_dir(out_dir) as tmp:
            save_adopted(tok, tmp)
        roles = ", ".join(f"{r} {i}" for r, i in tok.roles.items() if i is not None)
        Console(stderr=True).print(
            f"tokenizer: adopted {params.tokenizer.pretrained} ({tok.kind}, vocab "
            f"{tok.vocab_size}; {roles}; hash {tok.hash[:12]}) -> {out_dir}"
        )
        return
    raw = RawCorpus.open(raw_dir)
    texts = raw.sample_texts(params.tokenizer.max_train_bytes)
    started = time.perf_counter()
    tok = train_tokenizer(texts, params.tokenizer, progress=True)  # a bar, or a line every 10 s under DVC
    with atomic_dir(out_dir) as tmp:
        tok.save(tmp)
    Console(stderr=True).print(
        f"tokenizer: {len(tok.merges)} merges, vocab {tok.vocab_size} in "
        f"{time.perf_counter() - started:.1f}s -> {out_dir}"
    )
