"""The 14 attention kinds side by side, as public comparisons of attention report them (Long Range Arena; the
SLAY repository): quality on real text, training speed, time and memory against length, the longest length
that fits; for the encoder (bidirectional) and the decoder (causal) form of every kind.

    python benchmarks/attention_kinds.py               # 14 kinds x 3 seeds x 2 forms (~40 min on one core)
    python benchmarks/attention_kinds.py --quick       # 3 kinds, 1 seed, 20 steps, L = 256 / 1024
                                                       # (under a minute)
    python benchmarks/attention_kinds.py --kinds standard,linear --seeds 2
    python benchmarks/attention_kinds.py --write-docs  # also put the table into docs/attention.md §7

Quality, with lm's own code from data to metric. Per form the data go once through the stages' functions
(download, tokenize, encode, split: BPE vocabulary 2,048, split 70/10/20 with seed 0, stratified for
`classify`) in a temporary directory, and every run shares them:
* encoder: `task: classify` on Davidson et al.'s labelled tweets (../shared/data/davidson/labeled_tweets.csv,
  `data.target_column: hate`, 5.8% positive; rows of at most 64 tokens), metric: test ROC-AUC. A classifier on
  a real labelled task is what lm's encoder is for, and ROC-AUC is threshold-free, so a kind that ranks well
  but is still miscalibrated after a short run is not penalised. (Masked-LM perplexity would exercise the
  attention more directly, but lm's masked LM needs thousands of steps to leave unigram statistics behind:
  README, WikiText-2 row.)
* decoder: `task: clm` on TinyStories (../shared/data/tinystories/validation.txt, packed windows of 128
  tokens), metric: test perplexity (lm.infer.scoring.lm_statistics: every position of every test window).
Each (form, seed, kind) is one lm.train.loop.train run: params.yaml's recipe with the model pinned to d_model
64, 2 layers, 4 heads, d_ff 256, dropout 0.1, the kind's default options, AdamW at lr 2e-3 (5% warmup, cosine
to 2e-4), `--steps` optimizer steps (default: encoder 250 of batch 32 rows, decoder 200 of batch 8 windows),
one validation pass after the last step; the exported weights are scored on the test split. The seed is
params' `seed` (model initialisation, random features, data order, dropout), so a run is reproduced by its
seed; the split stays seed 0's. Per kind: mean and sample standard deviation (n - 1) over the seeds; a run
that fails (diverged: non-finite weights) is left out and counted. Beside each table, the classical baseline
on the same test rows, computed once: TF-IDF + logistic regression (encoder), a Kneser-Ney trigram (decoder).

Training tokens/s: per run, the median over its steps of the step's real (non-padding) tokens / the step's
wall time (lm's step log, validation excluded), then the mean over seeds.

One layer against length: benchmarks/attention.py's measurement (its worker and run_case: one fresh process
per case, forward + backward of one attention layer, d_model 256, 4 heads, batch 1, peak = the growth of
ru_maxrss during the first pass), bidirectional for the encoder, causal for the decoder. Lengths double from
256; at the table's lengths (256, 1024, 4096, 16384) the time is the median of the passes that fit in
`--timing-budget` seconds, at the others one pass. The search stops at the first length whose peak exceeds
`--memory-budget-mb` (2048) or whose pass exceeds `--time-cap-s` (10), and the longest length that fits is the
last one before it. A length whose projection from the last doubling (memory and time growth, clamped to
x2..x4) is beyond twice the budget or cap is not run (a 5 GB score matrix would prove nothing more); the stop
reason says so.

The tables print as Markdown; the last line is one JSON object, also written to
benchmarks/results/attention_kinds.json (benchmarks/record.py). On a shared CPU tokens/s and times are
comparable within one run only.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]
import attention  # noqa: E402  benchmarks/attention.py: the per-case worker and its layer size
import record  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DOCS = REPO / "docs" / "attention.md"
START, END = "<!-- attention-kinds:start -->", "<!-- attention-kinds:end -->"

VOCAB = 2048
MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "dropout": 0.1, "attention_dropout": 0.0}
TRAIN = {"lr": 2e-3, "min_lr": 2e-4, "warmup_fraction": 0.05, "warmup_steps": None, "weight_decay": 0.01}
LENGTHS = [256, 1024, 4096, 16384]
QUICK_KINDS = ["standard", "linear", "slay-anchor"]
QUICK = {"steps": 20, "lengths": [256, 1024], "max_length": 1024, "max_rows": 3000, "timing_budget": 0.3}


@dataclass(frozen=True)
class Form:
    """One side of the table: the task lm trains, on which data, and the metric it is judged by."""

    name: str  # encoder | decoder
    task: str  # classify | clm
    data: Path
    target: str | None  # classify: the column of annotators' shares
    metric: str  # roc_auc | perplexity
    higher_is_better: bool
    steps: int
    batch: int
    max_len: int
    causal: bool

    @property
    def metric_label(self) -> str:
        return "test ROC-AUC" if self.metric == "roc_auc" else "test perplexity"


FORMS = (
    Form(
        "encoder",
        "classify",
        SHARED / "davidson" / "labeled_tweets.csv",
        "hate",
        "roc_auc",
        True,
        250,
        32,
        64,
        False,
    ),
    Form(
        "decoder",
        "clm",
        SHARED / "tinystories" / "validation.txt",
        None,
        "perplexity",
        False,
        200,
        8,
        128,
        True,
    ),
)


# ---------------------------------------------------------------------------------------------------- quality


def form_params(
    form: Form, *, kind: str = "standard", seed: int = 0, steps: int = 1, max_rows: int | None = None
):
    """params.yaml with the benchmark's keys set, validated as `lm` validates it."""
    from lm.config import load_params, parse_params

    raw = load_params(REPO / "params.yaml").model_dump()
    raw["task"], raw["seed"] = form.task, seed
    raw["data"].update(
        source=str(form.data),
        target_column=form.target,
        identity_columns=[],
        max_rows=max_rows,
        id_column=None,
    )
    raw["tokenizer"].update(pretrained=None, vocab_size=VOCAB)
    raw["encode"].update(max_len=form.max_len, mode="memmap")
    raw["split"].update(val_fraction=0.1, test_fraction=0.2)
    raw["model"].update(MODEL, attention=kind, attention_options={})
    raw["train"].update(
        TRAIN,
        batch_size=form.batch,
        grad_accum_steps=1,
        max_steps=steps,
        min_steps=steps,
        eval_every=steps,
        patience=None,
        select_by="auto",
        threads=1,
        ensemble=1,
        nproc=1,
        nnodes=1,
        device="cpu",
        amp="none",
        compile=False,
        init_from=None,
        ema_decay=None,
    )
    raw["pretrain"]["source"] = None
    return parse_params(raw)


@dataclass
class Prepared:
    """A form's data, tokenized, encoded and split once (under `root`), shared by every run."""

    form: Form
    root: Path
    max_rows: int | None
    rows: dict[str, int]
    baseline: dict[str, Any]

    def dir(self, name: str) -> Path:
        return self.root / name


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """The stages' and the training loop's own lines (rich, on stderr) into a buffer."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield buffer


def prepare(form: Form, root: Path, max_rows: int | None = None) -> Prepared:
    """download -> tokenize -> encode -> split under root, then the baseline's score on the test rows."""
    from lm.data.split import load_split
    from stages import download, encode, split, tokenize

    params = form_params(form, max_rows=max_rows)
    with quiet():
        download.run(params, out_dir=root / "raw")
        tokenize.run(params, raw_dir=root / "raw", out_dir=root / "tokenizer")
        encode.run(params, raw_dir=root / "raw", tokenizer_dir=root / "tokenizer", out_dir=root / "encoded")
        split.run(params, encoded_dir=root / "encoded", out_dir=root / "split", report=root / "split.json")
    rows = {name: len(idx) for name, idx in load_split(root / "split").items()}
    prep = Prepared(form, root, max_rows, rows, {})
    prep.baseline = baseline(prep, params)
    return prep


def _test_data(prep: Prepared, params):  # type: ignore[no-untyped-def]
    import numpy as np

    from lm.data.batches import make_items
    from lm.data.encoded import Encoded
    from lm.data.objectives import make_objective
    from lm.data.split import load_split

    enc = Encoded.open(prep.dir("encoded"))
    parts = load_split(prep.dir("split"))
    items = make_items(enc, parts["test"], prep.form.task, enc.max_len)
    objective = make_objective(params, enc, np.zeros(0, dtype=np.int64)) if prep.form.task == "clm" else None
    return enc, parts, items, objective


def baseline(prep: Prepared, params) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The classical model on the same test rows: TF-IDF + logistic regression ROC-AUC, or a Kneser-Ney
    trigram's perplexity (lm.eval.baselines, as `lm evaluate` reports them)."""
    import pandas as pd

    from lm.eval.baselines import ngram_statistics, tfidf_logreg_probs
    from lm.eval.classification import classification_report

    enc, parts, items, objective = _test_data(prep, params)
    if prep.form.task == "clm":
        stats = ngram_statistics(
            enc,
            parts["train"],
            objective,
            items,
            task="clm",
            batch_size=params.eval.batch_size,
            token_bytes=None,
        )
        return {"model": f"kneser_ney_{stats['order']}gram", "perplexity": stats["perplexity"]}
    texts = (
        pd.read_parquet(prep.dir("raw") / "corpus.parquet", columns=["text"])["text"].fillna("").astype(str)
    )
    test = parts["test"]
    probs = tfidf_logreg_probs(
        texts.iloc[parts["train"]].tolist(),
        enc.targets[parts["train"]] >= params.threshold,
        texts.iloc[test].tolist(),
    )
    report = classification_report(enc.targets[test], probs, threshold=params.threshold)
    return {"model": "tfidf_logreg", "roc_auc": report["roc_auc"]}


def score_test_split(prep: Prepared, params, model_dir: Path) -> float:  # type: ignore[no-untyped-def]
    """The exported model's test ROC-AUC (classify) or test perplexity (clm)."""
    from lm.eval.classification import classification_report
    from lm.infer.scoring import classifier_probs, lm_statistics
    from lm.model.export import load_exported

    model, _ = load_exported(model_dir)
    enc, _, items, objective = _test_data(prep, params)
    if prep.form.task == "clm":
        return float(lm_statistics(model, objective, items, params.eval.batch_size, None)["perplexity"])
    rows, probs = classifier_probs(model, items, params.eval.batch_size)
    return float(classification_report(enc.targets[rows], probs, threshold=params.threshold)["roc_auc"])


def train_and_score(prep: Prepared, kind: str, seed: int, steps: int) -> dict[str, Any]:
    """One lm.train.loop.train run of `kind` with `seed`, scored on the test split; a run that fails
    (diverged, non-finite weights) gives its error instead of the metric."""
    from lm.train.loop import train

    params = form_params(prep.form, kind=kind, seed=seed, steps=steps, max_rows=prep.max_rows)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="run-", dir=prep.root) as tmp, quiet() as log:
        try:
            result = train(
                params,
                encoded_dir=prep.dir("encoded"),
                split_dir=prep.dir("split"),
                tokenizer_dir=prep.dir("tokenizer"),
                out_dir=Path(tmp) / "model",
                reports_dir=Path(tmp) / "reports",
            )
            metric = score_test_split(prep, params, Path(tmp) / "model")
        except Exception as err:
            tail = log.getvalue().strip().splitlines()[-3:]
            return {
                "seed": seed,
                "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                "log_tail": tail,
                "wall_s": round(time.perf_counter() - started, 1),
            }
    if not math.isfinite(metric):
        return {
            "seed": seed,
            "error": f"non-finite {prep.form.metric}",
            "wall_s": round(time.perf_counter() - started, 1),
        }
    return {
        "seed": seed,
        prep.form.metric: metric,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in result.step_log),
        "steps": result.steps,
        "best_step": result.best_step,
        "final_train_loss": result.final_train_loss,
        "train_s": round(result.seconds, 2),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the finite values; std is None below two values.

    >>> mean_std([1.0, 3.0, None])
    {'mean': 2.0, 'std': 1.4142135623730951, 'n': 2, 'values': [1.0, 3.0, None]}
    """
    ok = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": statistics.fmean(ok) if ok else None,
        "std": statistics.stdev(ok) if len(ok) > 1 else None,
        "n": len(ok),
        "values": list(values),
    }


# ------------------------------------------------------------------------------------------ one layer, length


def length_series(
    ctx,
    kind: str,
    causal: bool,
    *,
    lengths: Sequence[int],
    max_length: int,
    memory_budget_mib: float,
    time_cap_s: float,
    timing_budget: float,
    threads: int,
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """One layer of `kind` at L = 256, 512, ... (benchmarks/attention.py's run_case, one process per case)
    until a case does not fit the memory budget or the time cap; `longest_fit` is the last length that did."""
    cases: list[dict[str, Any]] = []
    fit, stop, L = None, None, min(lengths)
    while True:
        opts = argparse.Namespace(
            causal=causal,
            budget=timing_budget if L in lengths else 0.0,
            device="cpu",
            threads=threads,
            case_timeout=max(60.0, 4 * time_cap_s),
        )
        case = attention.run_case(ctx, opts, kind, L)
        cases.append(
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in case.items() if k != "kind"}
        )
        if "error" in case:
            stop = f"error at {L}: {case['error']}"
            break
        if case["peak_mib"] > memory_budget_mib:
            stop = f"memory at {L}: {case['peak_mib']:.0f} MiB"
            break
        if case["first_s"] > time_cap_s:
            stop = f"time at {L}: {case['first_s']:.1f} s"
            break
        fit = L
        if max_length < 2 * L:
            stop = f"max length {max_length}"
            break
        if len(cases) >= 2:  # what the next doubling would cost, from the last one
            prev = cases[-2]
            mem = case["peak_mib"] * min(4.0, max(2.0, case["peak_mib"] / max(prev["peak_mib"], 1e-9)))
            sec = case["first_s"] * min(4.0, max(2.0, case["first_s"] / max(prev["first_s"], 1e-9)))
            if mem > 2 * memory_budget_mib:
                stop = f"memory at {2 * L}: projected {mem:.0f} MiB, not run"
                break
            if sec > 2 * time_cap_s:
                stop = f"time at {2 * L}: projected {sec:.0f} s, not run"
                break
        L *= 2
    return {"longest_fit": fit, "capped": stop.startswith("max length"), "stop": stop, "cases": cases}


# ------------------------------------------------------------------------------------------------------ table


def _metric(v: float | None, metric: str) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if metric == "roc_auc" else f"{v:.1f}"


def _n(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _cell(cases: list[dict], L: int) -> str:
    case = next((c for c in cases if c["L"] == L), None)
    if case is None:
        return "-"
    if "error" in case:
        return "error"
    return f"{_n(case['seconds'] * 1e3)} / {_n(case['peak_mib'])}"


def markdown(figures: dict[str, Any]) -> str:
    """The tables (one per form) from the figures, as docs/attention.md §7 shows them."""
    layer = figures["layer"]
    out = []
    for name, f in figures["forms"].items():
        metric, higher = f["metric"], f["higher_is_better"]
        means = [r[metric]["mean"] for r in f["results"] if r[metric]["mean"] is not None]
        best = (max(means) if higher else min(means)) if means else None
        n_seeds = len(figures["seeds"])
        head = (
            f"| kind | {f['metric_label']}, mean ± std ({n_seeds} seed{'s' if n_seeds > 1 else ''}) "
            f"| train tokens/s | "
            + " | ".join(f"L={L}: ms / MiB" for L in layer["lengths"])
            + f" | longest L within {layer['memory_budget_mib']:,.0f} MiB, {layer['time_cap_s']:g} s |"
        )
        out += [
            f"**{name}** ({f['task']}, {f['data_label']}; layer: "
            f"{'causal' if f['causal'] else 'bidirectional'})",
            "",
            head,
            "|---" * (4 + len(layer["lengths"])) + "|",
        ]
        for r in f["results"]:
            m = r[metric]
            value = _metric(m["mean"], metric)
            if m["mean"] is not None and m["mean"] == best:
                value = f"**{value}**"
            if m["std"] is not None:
                value += f" ± {_metric(m['std'], metric)}"
            if m["n"] < len(m["values"]):
                value += f" ({m['n']}/{len(m['values'])} runs; the others diverged)"
            tps = r["tokens_per_s"]["mean"]
            fit = r["layer"]["longest_fit"]
            fit_cell = "-" if fit is None else (f"≥ {fit:,}" if r["layer"]["capped"] else f"{fit:,}")
            out.append(
                f"| `{r['kind']}` | {value} | {'-' if tps is None else f'{tps:,.0f}'} | "
                + " | ".join(_cell(r["layer"]["cases"], L) for L in layer["lengths"])
                + f" | {fit_cell} |"
            )
        base = f["baseline"]
        out += [
            "",
            (
                f"Baseline on the same test rows: {base['model']}, {f['metric_label']} "
                f"{_metric(base.get(metric), metric)}."
            ),
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def docs_block(figures: dict[str, Any]) -> str:
    run = figures["run"]
    note = (
        f"<!-- generated by `{run['command']}{'' if '--write-docs' in run['command'] else ' --write-docs'}` "
        "from benchmarks/results/attention_kinds.json: do not edit by hand -->"
    )
    return f"{START}\n{note}\n\n{markdown(figures)}\n{END}"


def replace_block(text: str, block: str) -> str:
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{DOCS}: no '{START}' ... '{END}' section to replace")
    return text[:i] + block + text[j + len(END) :]


# ------------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"kinds {', '.join(QUICK_KINDS)}, 1 seed, {QUICK['steps']} steps, {QUICK['max_rows']} rows, "
        f"L = {', '.join(map(str, QUICK['lengths']))}",
    )
    ap.add_argument("--kinds", default=None, help="comma-separated kinds (default: all 14)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 3, quick 1)")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer steps of every run (default: encoder 250, decoder 200; quick 20)",
    )
    ap.add_argument("--forms", default="encoder,decoder", help="encoder, decoder or both")
    ap.add_argument(
        "--encoder-data", type=Path, default=FORMS[0].data, help="CSV with `text` and the target column"
    )
    ap.add_argument(
        "--encoder-target", default=FORMS[0].target, help="the encoder's target column (default hate)"
    )
    ap.add_argument(
        "--decoder-data", type=Path, default=FORMS[1].data, help="text file, blank-line-separated documents"
    )
    ap.add_argument("--max-rows", type=int, default=None, help="data.max_rows of both sources (quick: 3000)")
    ap.add_argument(
        "--lengths", default=None, help="the table's lengths (default 256,1024,4096,16384; quick 256,1024)"
    )
    ap.add_argument(
        "--max-length", type=int, default=None, help="longest length tried (default 131072, quick 1024)"
    )
    ap.add_argument("--memory-budget-mb", type=float, default=2048.0, help="peak MiB a layer's pass may take")
    ap.add_argument("--time-cap-s", type=float, default=10.0, help="seconds a layer's pass may take")
    ap.add_argument(
        "--timing-budget",
        type=float,
        default=None,
        help="seconds of timed passes at the table's lengths (default 0.5, quick 0.3)",
    )
    ap.add_argument(
        "--write-docs", action="store_true", help=f"replace the table in {DOCS.relative_to(REPO)}"
    )
    record.add_save_arg(ap)
    args = ap.parse_args(argv)

    import torch

    from lm.attention_kinds import KINDS

    torch.set_num_threads(1)
    kinds = args.kinds.split(",") if args.kinds else (QUICK_KINDS if args.quick else list(KINDS))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit(f"--kinds: unknown {unknown} (choose from {', '.join(KINDS)})")
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    lengths = (
        [int(v) for v in args.lengths.split(",")]
        if args.lengths
        else QUICK["lengths"]
        if args.quick
        else LENGTHS
    )
    max_length = args.max_length or (QUICK["max_length"] if args.quick else 131072)
    timing_budget = (
        args.timing_budget
        if args.timing_budget is not None
        else (QUICK["timing_budget"] if args.quick else 0.5)
    )
    max_rows = args.max_rows or (QUICK["max_rows"] if args.quick else None)
    data = {"encoder": (args.encoder_data, args.encoder_target), "decoder": (args.decoder_data, None)}
    forms = []
    for form in FORMS:
        if form.name not in args.forms.split(","):
            continue
        path, target = data[form.name]
        if not path.is_file():
            raise SystemExit(
                f"{form.name} data {path} not found (../shared/data, or pass --{form.name}-data)"
            )
        steps = args.steps or (QUICK["steps"] if args.quick else form.steps)
        forms.append(
            Form(
                form.name,
                form.task,
                path.resolve(),
                target,
                form.metric,
                form.higher_is_better,
                steps,
                form.batch,
                form.max_len,
                form.causal,
            )
        )

    started = time.perf_counter()
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "lm.model.attention"])
    series = {}
    for form in forms:
        for kind in kinds:
            series[form.name, kind] = s = length_series(
                ctx,
                kind,
                form.causal,
                lengths=lengths,
                max_length=max_length,
                memory_budget_mib=args.memory_budget_mb,
                time_cap_s=args.time_cap_s,
                timing_budget=timing_budget,
                threads=1,
            )
            print(
                f"  {form.name} {kind:14} layer: longest {s['longest_fit']} ({s['stop']}), "
                f"{time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    with tempfile.TemporaryDirectory(prefix="lm-kinds-") as tmp:
        prepared = {}
        for form in forms:
            t0 = time.perf_counter()
            prepared[form.name] = prep = prepare(form, Path(tmp) / form.name, max_rows)
            print(
                f"{form.name}: {form.task} on {form.data.name}, rows {prep.rows}, baseline {prep.baseline} "
                f"({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        runs: dict[tuple[str, str], list[dict]] = {(f.name, k): [] for f in forms for k in kinds}
        for seed in seeds:  # seed-major: machine noise spreads over the kinds instead of landing on one
            for form in forms:
                for kind in kinds:
                    run = train_and_score(prepared[form.name], kind, seed, form.steps)
                    runs[form.name, kind].append(run)
                    value = run.get(form.metric)
                    print(
                        f"  {form.name} {kind:14} seed {seed}: "
                        + (
                            f"{form.metric} {value:.4f}, {run['tokens_per_s']:,.0f} tokens/s, "
                            f"{run['wall_s']} s"
                            if value is not None
                            else f"FAILED {run['error']}"
                        )
                        + f", {time.perf_counter() - started:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )

    figures: dict[str, Any] = {
        "benchmark": "attention_kinds",
        "kinds": kinds,
        "seeds": seeds,
        "model": {
            **MODEL,
            "vocab_size": VOCAB,
            **TRAIN,
            "validation": "once, after the last step",
            "threads": 1,
        },
        "layer": {
            "d_model": attention.D_MODEL,
            "heads": attention.HEADS,
            "batch": 1,
            "threads": 1,
            "lengths": lengths,
            "max_length": max_length,
            "memory_budget_mib": args.memory_budget_mb,
            "time_cap_s": args.time_cap_s,
            "timing_budget_s": timing_budget,
        },
        "forms": {},
    }
    for form in forms:
        prep = prepared[form.name]
        label = str(form.data.relative_to(SHARED)) if form.data.is_relative_to(SHARED) else form.data.name
        figures["forms"][form.name] = {
            "task": form.task,
            "data": str(form.data),
            "data_label": label + (f", target {form.target}" if form.target else ""),
            "max_rows": max_rows,
            "rows": prep.rows,
            "steps": form.steps,
            "batch": form.batch,
            "max_len": form.max_len,
            "causal": form.causal,
            "metric": form.metric,
            "metric_label": form.metric_label,
            "higher_is_better": form.higher_is_better,
            "baseline": prep.baseline,
            "results": [
                {
                    "kind": kind,
                    form.metric: mean_std([r.get(form.metric) for r in runs[form.name, kind]]),
                    "tokens_per_s": mean_std([r.get("tokens_per_s") for r in runs[form.name, kind]]),
                    "runs": runs[form.name, kind],
                    "layer": series[form.name, kind],
                }
                for kind in kinds
            ],
        }
    figures["wall_s"] = round(time.perf_counter() - started, 1)
    print(markdown(figures), flush=True)
    out = record.finish(figures, quick=args.quick, save=not args.no_save)
    if args.write_docs:
        DOCS.write_text(replace_block(DOCS.read_text(), docs_block(out)))
        print(f"wrote the table of {DOCS.relative_to(REPO)}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
