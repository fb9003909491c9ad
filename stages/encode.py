"""Stage `encode`: tokenize every document once into the memmaps of lm.data.encoded, reading the raw corpus
one shard at a time (encode.mode: on_the_fly writes only the index; batches tokenize their documents)."""

from __future__ import annotations

from lm.config import Params
from lm.io import atomic_dir, require
from lm.paths import ENCODED, RAW, TOKENIZER


def check_roles(tok, params: Params) -> None:
    """Stop before encoding when the tokenizer lacks a token the task needs (a pretrained tokenizer may)."""
    from lm.errors import LmError

    needs = {
        "clm": {"eot": "documents are joined by it"},
        "mlm": {
            "mask": "task=mlm masks tokens with it (use a BERT/RoBERTa tokenizer)",
            "cls": "every mlm window starts with it",
            "eot": "documents are joined by it",
        },
        "classify": {"pad": "rows are padded with it"},
    }[params.task]
    if params.task == "classify" and params.model.pooling == "cls":
        needs["cls"] = "a classifier with model.pooling: cls pools it (set model.pooling: mean)"
    for role, why in needs.items():
        if tok.roles.get(role) is None:
            raise LmError(f"tokenizer.pretrained: the tokenizer has no {role} token; {why}")


def run(params: Params, raw_dir=RAW, tokenizer_dir=TOKENIZER, out_dir=ENCODED) -> None:
    import numpy as np
    from rich.console import Console

    from lm.data.encode_corpus import encode_rows, encode_stream
    from lm.data.encoded import Encoded
    from lm.data.on_the_fly import raw_manifest_hash
    from lm.data.raw import RawCorpus
    from lm.progress import counted, progress
    from lm.tokenizer import load_tokenizer

    raw = RawCorpus.open(raw_dir)
    require(tokenizer_dir, "lm tokenize")
    tok = load_tokenizer(tokenizer_dir)
    check_roles(tok, params)
    n_docs = raw.n_rows
    max_len = params.encode.max_len
    targets = np.full(n_docs, np.nan, dtype=np.float32)
    with_target = "target" in raw.columns

    def texts():
        start = 0
        for table in raw.iter_shards(["text", "target"] if with_target else ["text"]):
            if with_target:
                targets[start : start + table.num_rows] = table.column("target").to_numpy(
                    zero_copy_only=False
                )
            start += table.num_rows
            yield from table.column("text").to_pylist()

    write_tokens = params.encode.mode == "memmap"
    with atomic_dir(out_dir) as tmp, progress("encode", n_docs, "documents") as meter:
        if params.task in ("clm", "mlm"):  # packed into full windows at training time
            info = encode_stream(counted(texts(), meter), n_docs, tok, tmp, write_tokens=write_tokens)
        else:
            info = encode_rows(counted(texts(), meter), n_docs, tok, max_len, tmp, write_tokens=write_tokens)
        if not write_tokens:
            info["mode"] = "on_the_fly"
            # the raw corpus's manifest hash: a changed text changes meta.json, so DVC re-runs what reads the
            # encoding, and a reader of a stale encoding is stopped (OnTheFlyTokens)
            info["source"] = {
                "raw": str(raw_dir),
                "tokenizer": str(tokenizer_dir),
                "raw_manifest_sha256": raw_manifest_hash(raw_dir),
            }
        Encoded.write_meta(
            tmp,
            task=params.task,
            layout=info,
            n_docs=n_docs,
            max_len=max_len,
            vocab_size=tok.vocab_size,
            special_ids=tok.special_ids,
            tokenizer_hash=tok.hash,
            roles=tok.roles,
            targets=targets,
        )
    Console(stderr=True).print(
        f"encode: {n_docs} documents, {info['n_tokens']} tokens ({info['dtype']}, "
        f"{info.get('n_truncated', 0)} truncated at {max_len}) -> {out_dir}"
        + (" (on the fly: index only)" if not write_tokens else "")
    )
