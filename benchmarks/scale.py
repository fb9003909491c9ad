"""Growth with corpus size: wall time and peak memory of download -> tokenize -> encode at N MB and 10 x N MB.

    python benchmarks/scale.py            # N = 20 MB and 200 MB, vocab 8,192
    python benchmarks/scale.py --quick    # N = 3 MB and 30 MB, vocab 2,048 (under a minute)

The corpus is a local CSV (`text` column) of real-text-like documents: sentences of the real samples under
../shared/data (Civil Comments, TinyStories, WikiText-2) drawn at random and joined into documents of 2-12
sentences, or, when that folder is absent, sentences of the embedded synthetic generator (lm.data.synthetic).
The same sentence pool serves both sizes, so the 10x corpus has the same kind of text, just more of it; and
every document ends with a reference number of its own (real text's long tail: numbers, handles and URLs keep
adding words seen once), so the tokenizer's distinct words grow with the corpus as they do in real text.

Each stage runs as `python -m lm.cli <stage>` in a fresh child process (task clm, data.shard_mb = N / 8 so the
small corpus already spans several shards, encode.mode memmap), in a temporary working directory; its wall
time is measured around the child and its peak resident memory is the child's own ru_maxrss (os.wait4), so
every figure belongs to one stage alone. The last line is one JSON object: per size and stage `seconds` and
`peak_rss_mb`, `rss_growth` (the largest stage peak at 10x over the one at 1x; target <= 1.5: memory does not
grow with the corpus) and `time_growth` (total time at 10x over 1x; target <= 12: time grows at most
linearly), also written to benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record
from bpe_train import real_documents

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "tokenize", "encode")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentence_pool() -> tuple[list[str], str]:
    docs = real_documents()
    label = "real sentences: Civil Comments + TinyStories + WikiText-2, redrawn into documents"
    if docs is None:
        sys.path.insert(0, str(REPO))
        from lm.data.synthetic import generate_corpus

        docs = generate_corpus(20_000, 0, [])["text"].tolist()
        label = "synthetic sentences (lm.data.synthetic; ../shared/data not found), redrawn into documents"
    pool = [s.strip() for d in docs for s in _SENTENCE.split(d.replace("\n", " ")) if len(s.strip()) > 1]
    return pool, label


def write_corpus(path: Path, pool: list[str], mb: float, seed: int) -> tuple[int, int]:
    """A CSV of documents of 2-12 random pool sentences, until it holds `mb` MB of text; (rows, bytes)."""
    rng = random.Random(seed)
    target, size, rows = int(mb * 1e6), 0, 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["text"])
        while size < target:
            doc = " ".join(rng.choices(pool, k=rng.randint(2, 12))) + f" (ref {rows}-{rng.randrange(10**6)})"
            out.writerow([doc])
            size += len(doc.encode("utf-8"))
            rows += 1
    return rows, size


def params_yaml(shard_mb: float, vocab: int) -> str:
    return f"""task: clm
seed: 0
data:
  source: corpus.csv
  text_column: text
  target_column: null
  identity_columns: []
  shard_mb: {shard_mb}
tokenizer:
  vocab_size: {vocab}
  max_train_bytes: null
encode:
  max_len: 128
  mode: memmap
"""


def run_stage(stage: str, cwd: Path) -> dict:
    """One stage in a fresh child: wall seconds and the child's own peak RSS (MB)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm.cli", stage, "--params", "params.yaml"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(out.decode(errors="replace"))
        raise SystemExit(f"scale: `lm {stage}` failed with code {proc.returncode}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def measure(mb: float, pool: list[str], shard_mb: float, vocab: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lm-scale-") as tmp:
        work = Path(tmp)
        rows, size = write_corpus(work / "corpus.csv", pool, mb, seed)
        (work / "params.yaml").write_text(params_yaml(shard_mb, vocab))
        stages = {stage: run_stage(stage, work) for stage in STAGES}
        import json

        manifest = json.loads((work / "data" / "raw" / "manifest.json").read_text())
        meta = json.loads((work / "data" / "encoded" / "meta.json").read_text())
    return {
        "mb": round(size / 1e6, 2),
        "rows": rows,
        "shards": manifest["shards"]["n"],
        "tokens": meta["n_tokens"],
        "stages": stages,
        "seconds": round(sum(s["seconds"] for s in stages.values()), 2),
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 3 MB, vocab 2,048")
    ap.add_argument("--mb", type=float, default=None, help="N, the small corpus in MB (default 20, quick 3)")
    ap.add_argument("--factor", type=float, default=10.0, help="the large corpus is factor x N (default 10)")
    ap.add_argument("--shard-mb", type=float, default=None, help="data.shard_mb (default N / 8)")
    ap.add_argument(
        "--vocab", type=int, default=None, help="tokenizer.vocab_size (default 8,192, quick 2,048)"
    )
    record.add_save_arg(ap)
    args = ap.parse_args()
    mb = args.mb or (3.0 if args.quick else 20.0)
    shard_mb = args.shard_mb or round(mb / 8, 3)
    vocab = args.vocab or (2_048 if args.quick else 8_192)

    pool, label = sentence_pool()
    small = measure(mb, pool, shard_mb, vocab, seed=0)
    large = measure(mb * args.factor, pool, shard_mb, vocab, seed=1)
    for name, size in (("1x", small), (f"{args.factor:g}x", large)):
        per = ", ".join(
            f"{s} {v['seconds']:.1f}s / {v['peak_rss_mb']:.0f} MB" for s, v in size["stages"].items()
        )
        print(
            f"{name}: {size['mb']:.1f} MB, {size['rows']} docs, {size['shards']} shards, {size['tokens']} "
            f"tokens: {per}",
            file=sys.stderr,
        )
    figures = {
        "benchmark": "scale",
        "corpus": label,
        "shard_mb": shard_mb,
        "vocab_size": vocab,
        "factor": args.factor,
        "small": small,
        "large": large,
        "rss_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "time_growth": round(large["seconds"] / small["seconds"], 3),
        "rss_growth_by_stage": {
            s: round(large["stages"][s]["peak_rss_mb"] / small["stages"][s]["peak_rss_mb"], 3) for s in STAGES
        },
        "time_growth_by_stage": {
            s: round(large["stages"][s]["seconds"] / small["stages"][s]["seconds"], 3) for s in STAGES
        },
        "targets": {"rss_growth": 1.5, "time_growth": 12},
    }
    record.finish(figures, quick=args.quick, save=not args.no_save)


if __name__ == "__main__":
    main()
