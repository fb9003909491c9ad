"""Encoding speed: lm's encode path (tiktoken) vs Hugging Face `tokenizers`, same vocabulary, same text.

    python benchmarks/encode.py            # vocab 10,000 trained by lm, 12 MB of text encoded
    python benchmarks/encode.py --quick    # vocab 2,000, 2 MB (well under a minute)

The vocabulary is trained by lm on the corpus (built as in bpe_train.py: real samples from ../shared/data
or a synthetic fallback), saved, and loaded into `tokenizers.Tokenizer.from_file(tokenizer.json)`. Then the
same documents are encoded by:

* lm batch:  ``Tokenizer.encode_batch(docs, allowed_special="all")`` (tiktoken on a thread pool),
* lm single: ``[tok.encode(d, allowed_special="all") for d in docs]`` (one thread),
* hf batch fast: ``tokenizers.Tokenizer.encode_batch_fast(docs, add_special_tokens=False)`` (tokenizers >=
  0.20: the same ids without character offsets, Hugging Face's fastest batch call), when installed,
* hf batch:  ``tokenizers.Tokenizer.encode_batch(docs, add_special_tokens=False)`` (ids, offsets, masks),

all with every core. The reference figure (`hf_*`) is the fastest Hugging Face call (`hf_call` names it);
each call's own figure is in `hf_calls`. The ids of every call are compared with lm's batch ids
(`ids_identical`, computed from the comparisons; HF always treats special-token strings as special, hence
"all"), and the script exits with status 1 after writing its figures when any differ. Each call is timed
best-of --repeats. The last line is one JSON object, also written to benchmarks/results/encode.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record
from bpe_train import SPECIALS, build_corpus


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
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed runs of each encoder (default 3, quick 2)"
    )
    record.add_save_arg(ap)
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
    lm_batch_s, lm_ids = best_of(
        repeats, lambda: tok.encode_batch(docs, allowed_special="all", num_threads=threads)
    )
    lm_single_s, lm_single_ids = best_of(
        repeats, lambda: [tok.encode(d, allowed_special="all") for d in docs]
    )
    hf_calls = [c for c in ("encode_batch_fast", "encode_batch") if hasattr(hf, c)]
    hf_s, same = {}, {"lm_single": lm_single_ids == lm_ids}
    for call in hf_calls:
        hf_s[call], encodings = best_of(
            repeats, lambda c=call: getattr(hf, c)(docs, add_special_tokens=False)
        )
        same[f"hf_{call}"] = [e.ids for e in encodings] == lm_ids
    hf_call = min(hf_s, key=hf_s.__getitem__)
    n_tokens = sum(map(len, lm_ids))
    mb = n_bytes / 1e6
    rows = [("lm encode_batch", lm_batch_s), ("lm encode (1 thread)", lm_single_s)]
    rows += [(f"hf {call}", hf_s[call]) for call in hf_calls]
    for name, secs in rows:
        print(f"{name:>22}: {secs:6.2f} s  {mb / secs:6.2f} MB/s  {n_tokens / secs / 1e6:6.2f} M tokens/s")
    identical = all(same.values())
    print(
        f"ids identical: {identical} ({', '.join(f'{k} {v}' for k, v in same.items())}); "
        f"{len(docs)} documents, {n_tokens} tokens ({n_bytes / n_tokens:.2f} bytes/token); "
        f"lm batch / hf {hf_call} speed: {hf_s[hf_call] / lm_batch_s:.2f}x"
    )
    record.finish({
        "benchmark": "encode",
        "corpus": label,
        "corpus_mb": round(mb, 2),
        "documents": len(docs),
        "vocab_size": tok.vocab_size,
        "threads": threads,
        "tokens": n_tokens,
        "ids_identical": identical,
        "ids_identical_by_call": same,
        "hf_call": hf_call,
        "hf_calls": {call: {"mb_s": round(mb / secs, 2), "mtok_s": round(n_tokens / secs / 1e6, 3)}
                     for call, secs in hf_s.items()},
        "tokenizers_version": tokenizers.__version__,
        "lm_batch_mb_s": round(mb / lm_batch_s, 2),
        "lm_single_mb_s": round(mb / lm_single_s, 2),
        "hf_mb_s": round(mb / hf_s[hf_call], 2),
        "lm_batch_mtok_s": round(n_tokens / lm_batch_s / 1e6, 3),
        "lm_single_mtok_s": round(n_tokens / lm_single_s / 1e6, 3),
        "hf_mtok_s": round(n_tokens / hf_s[hf_call] / 1e6, 3),
        "lm_batch_over_hf_speed": round(hf_s[hf_call] / lm_batch_s, 3),
    }, quick=args.quick, save=not args.no_save)  # fmt: skip
    if not identical:
        sys.exit(f"ids differ: {same}")


if __name__ == "__main__":
    main()
