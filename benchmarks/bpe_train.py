"""BPE training speed and memory: lm's trainer vs Hugging Face `tokenizers`, same corpus, same vocab size.

    python benchmarks/bpe_train.py            # vocab 10,000 on >= 12 MB of text
    python benchmarks/bpe_train.py --quick    # vocab 2,000 on ~2 MB (well under a minute)

The corpus is built from the real samples under ../shared/data (Civil Comments comment text, TinyStories,
WikiText-2), concatenated and repeated until it reaches --mb; when they are absent a seeded synthetic
corpus (Zipf-distributed words) is generated instead. The output says which.

Each trainer runs in its own child process so that its peak memory (ru_maxrss, including lm's worker
processes) is measured in isolation; the corpus is loaded before the clock starts. HF: BPE model,
ByteLevel pre-tokenizer (the same GPT-2 pattern), BpeTrainer with the 256-byte initial alphabet; it uses
all cores (rayon) unless RAYON_NUM_THREADS is set. lm: `train_bpe(texts, vocab, specials, workers=--workers)`.
The last line is one JSON object with the figures, also written to benchmarks/results/bpe_train.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"]


def real_documents() -> list[str] | None:
    comments = DATA / "civil_comments" / "toxic_spans_comments.csv"
    stories = DATA / "tinystories" / "validation.txt"
    wiki = [DATA / "wikitext-2" / "wiki.valid.tokens", DATA / "wikitext-2" / "wiki.test.tokens"]
    if not all(p.is_file() for p in [comments, stories, *wiki]):
        return None
    csv.field_size_limit(1 << 24)
    with comments.open(newline="", encoding="utf-8") as f:
        docs = [row["comment_text"] for row in csv.DictReader(f)]
    docs += [s for s in stories.read_text(encoding="utf-8").split("\n\n") if s.strip()]
    for path in wiki:  # articles start at lines " = Title = "
        docs += [a for a in path.read_text(encoding="utf-8").split("\n = ") if a.strip()]
    return docs


def synthetic_documents(n_bytes: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(30_000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    docs, size = [], 0
    while size < n_bytes:
        words = rng.choices(vocab, weights, k=rng.randint(20, 200))
        doc = " ".join(words).capitalize() + rng.choice([".", "!", "?", ".\n"])
        docs.append(doc)
        size += len(doc) + 1
    return docs


def build_corpus(mb: float) -> tuple[list[str], str]:
    target = int(mb * 1e6)
    docs = real_documents()
    if docs is None:
        return synthetic_documents(target), "synthetic (seeded Zipf words; ../shared/data not found)"
    one = sum(len(d.encode()) for d in docs)
    out, size = [], 0
    while size < target:
        for d in docs:
            out.append(d)
            size += len(d.encode())
            if size >= target:
                break
    how = f"its first {size / 1e6:.1f} MB" if size < one else f"repeated to {size / one:.2f} copies"
    label = (
        f"real: Civil Comments comment_text + TinyStories + WikiText-2 ({one / 1e6:.1f} MB, "
        f"{len(docs)} documents), {how}"
    )
    return out, label


def peak_mb() -> tuple[float, float]:
    """(this process, largest waited-for child) peak resident memory in MB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def child(kind: str, corpus: Path, vocab: int, workers: int) -> None:
    texts = pickle.loads(corpus.read_bytes())
    base, _ = peak_mb()
    if kind == "lm":
        from lm.tokenizer import train_bpe

        start = time.perf_counter()
        merges = train_bpe(texts, vocab, SPECIALS, workers=workers)
        seconds = time.perf_counter() - start
        tokens = [a + b for a, b in merges]
    else:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        start = time.perf_counter()
        tok.train_from_iterator(texts, trainer)
        seconds = time.perf_counter() - start
        from lm.tokenizer.hf_export import from_unicode

        merged = json.loads(tok.to_str())["model"]["merges"]
        pairs = (m.split(" ") if isinstance(m, str) else m for m in merged)
        tokens = [from_unicode(a) + from_unicode(b) for a, b in pairs]
    own, kids = peak_mb()
    print(json.dumps({"seconds": seconds, "peak_mb": own, "workers_peak_mb": kids, "base_mb": base,
                      "n_merges": len(tokens), "tokens": [t.hex() for t in tokens]}))  # fmt: skip


def run_child(kind: str, corpus: Path, vocab: int, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--vocab", str(vocab),
           "--workers", str(workers)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="vocab 2,000 on ~2 MB")
    ap.add_argument("--mb", type=float, default=None, help="corpus size in MB (default 12, quick 2)")
    ap.add_argument("--vocab", type=int, default=None, help="vocab size (default 10,000, quick 2,000)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="lm pre-tokenization processes")
    ap.add_argument("--repeats", type=int, default=None, help="runs per trainer (alternating; best kept)")
    ap.add_argument("--child", choices=["lm", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-save",
        action="store_true",
        help="print the JSON line only; do not write benchmarks/results/bpe_train.json",
    )
    args = ap.parse_args()
    vocab = args.vocab or (2_000 if args.quick else 10_000)
    if args.child:
        child(args.child, args.corpus, vocab, args.workers)
        return

    texts, label = build_corpus(args.mb or (2.0 if args.quick else 12.0))
    n_bytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {n_bytes / 1e6:.1f} MB, {len(texts)} documents; {label}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.pkl"
        corpus.write_bytes(pickle.dumps(texts))
        runs: dict[str, list[dict]] = {"hf": [], "lm": []}
        for _ in range(args.repeats or (1 if args.quick else 2)):
            for kind in runs:  # alternate, so that both see the same (noisy) machine
                runs[kind].append(run_child(kind, corpus, vocab, args.workers))
        hf, lm = (min(runs[k], key=lambda r: r["seconds"]) for k in ("hf", "lm"))
        hf_all, lm_all = ([round(r["seconds"], 2) for r in runs[k]] for k in ("hf", "lm"))
    overlap = len(set(lm["tokens"]) & set(hf["tokens"])) / max(1, len(hf["tokens"]))
    ratio = lm["seconds"] / hf["seconds"]
    for name, r in [("hf tokenizers", hf), (f"lm (workers={args.workers})", lm)]:
        print(f"{name:>20}: {r['seconds']:6.2f} s  {n_bytes / 1e6 / r['seconds']:5.1f} MB/s  "
              f"peak {r['peak_mb']:.0f} MB (workers {r['workers_peak_mb']:.0f} MB, "
              f"corpus loaded {r['base_mb']:.0f} MB)  "
              f"{r['n_merges']} merges")  # fmt: skip
    print(f"all runs (s): hf {hf_all}, lm {lm_all}")
    print(f"lm / hf time: {ratio:.2f}x (target <= 2.0x); learned-token overlap {overlap:.1%}")
    figures = {
        "benchmark": "bpe_train",
        "corpus": label,
        "corpus_mb": round(n_bytes / 1e6, 2),
        "vocab_size": vocab,
        "lm_workers": args.workers,
        "hf_threads": int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1)),
        "lm_seconds": round(lm["seconds"], 3),
        "hf_seconds": round(hf["seconds"], 3),
        "lm_runs_s": lm_all,
        "hf_runs_s": hf_all,
        "lm_over_hf": round(ratio, 3),
        "lm_peak_mb": round(lm["peak_mb"], 1),
        "lm_workers_peak_mb": round(lm["workers_peak_mb"], 1),
        "hf_peak_mb": round(hf["peak_mb"], 1),
        "corpus_loaded_mb": round(lm["base_mb"], 1),
        "token_overlap": round(overlap, 4),
    }
    import record  # benchmarks/ (this script's folder) is on sys.path

    record.finish(figures, quick=args.quick, save=not args.no_save)


if __name__ == "__main__":
    main()
