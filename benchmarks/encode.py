"""Encoding speed: lm's encode path (tiktoken) vs Hugging Face `tokenizers`, same vocabulary, same text.

    python benchmarks/encode.py            # vocab 10,000 trained by lm, 12 MB of text encoded
    python benchmarks/encode.py --quick    # vocab 2,000, 2 MB (well under a minute)

The vocabulary is trained by lm on the corpus (built as in bpe_train.py: real samples from ../shared/data
or a synthetic fallback), saved, and loaded into `tokenizers.Tokenizer.from_file(tokenizer.json)`. Then the
same documents are encoded by:

* lm batch:  ``Tokenizer.encode_batch(docs, allowed_special="all")`` (tiktoken on a thread pool),
* lm single: ``[tok.encode(d, allowed_special="all") for d in docs]`` (one thread),
* hf batch:  ``tokenizers.Tokenizer.encode_batch(docs, add_special_tokens=False)``,

and the ids are asserted identical (HF always treats special-token strings as special, hence "all").
Each is timed best-of --repeats. The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bpe_train import SPECIALS, build_corpus  # noqa: E402


def best_of(repeats: int, fn):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="vocab 2,000, 2 MB")
    ap.add_argument("--mb", type=float, default=None, help="text size in MB (default 12, quick 2)")
    ap.add_argument("--vocab", type=int, default=None, help="vocab size (default 10,000, quick 2,000)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs of each encoder (default 3, quick 2)")
    args = ap.parse_args()
    vocab = args.vocab or (2_000 if args.quick else 10_000)
    repeats = args.repeats or (2 if args.quick else 3)

    import tokenizers

    from lm.tokenizer import Tokenizer, train_bpe

    docs, label = build_corpus(args.mb or (2.0 if args.quick else 12.0))
    n_bytes = sum(len(d.encode()) for d in docs)
    print(f"corpus: {n_bytes / 1e6:.1f} MB, {len(docs)} documents; {label}")
    start = time.perf_counter()
    tok = Tokenizer(train_bpe(docs, vocab, SPECIALS, workers=os.cpu_count() or 1), SPECIALS)
    print(f"trained vocab {tok.vocab_size} with lm in {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        hf = tokenizers.Tokenizer.from_file(str(tok.save(tmp) / "tokenizer.json"))

    threads = os.cpu_count() or 1
    lm_batch_s, lm_ids = best_of(repeats, lambda: tok.encode_batch(docs, allowed_special="all", num_threads=threads))
    lm_single_s, lm_single_ids = best_of(repeats, lambda: [tok.encode(d, allowed_special="all") for d in docs])
    hf_s, hf_enc = best_of(repeats, lambda: hf.encode_batch(docs, add_special_tokens=False))
    hf_ids = [e.ids for e in hf_enc]
    assert lm_ids == lm_single_ids, "lm batch and single encodings differ"
    assert lm_ids == hf_ids, "lm (tiktoken) and Hugging Face ids differ"
    n_tokens = sum(map(len, lm_ids))
    rows = [("lm encode_batch", lm_batch_s), ("lm encode (1 thread)", lm_single_s), ("hf encode_batch", hf_s)]
    for name, secs in rows:
        print(f"{name:>22}: {secs:6.2f} s  {n_bytes / 1e6 / secs:6.2f} MB/s  {n_tokens / secs / 1e6:6.2f} M tokens/s")
    print(f"ids identical: {len(docs)} documents, {n_tokens} tokens ({n_bytes / n_tokens:.2f} bytes/token); "
          f"lm batch / hf speed: {hf_s / lm_batch_s:.2f}x")  # fmt: skip
    print(json.dumps({
        "benchmark": "encode",
        "corpus": label,
        "corpus_mb": round(n_bytes / 1e6, 2),
        "vocab_size": tok.vocab_size,
        "threads": threads,
        "tokens": n_tokens,
        "ids_identical": True,
        "lm_batch_mb_s": round(n_bytes / 1e6 / lm_batch_s, 2),
        "lm_single_mb_s": round(n_bytes / 1e6 / lm_single_s, 2),
        "hf_batch_mb_s": round(n_bytes / 1e6 / hf_s, 2),
        "lm_batch_mtok_s": round(n_tokens / lm_batch_s / 1e6, 3),
        "lm_single_mtok_s": round(n_tokens / lm_single_s / 1e6, 3),
        "hf_batch_mtok_s": round(n_tokens / hf_s / 1e6, 3),
        "lm_batch_over_hf_speed": round(hf_s / lm_batch_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
