"""Stage `evaluate`: score the test split; write reports/metrics.json (the headline figures that `dvc exp
show` and `dvc metrics diff` compare), reports/evaluation.json (everything: full baseline report, per-identity
bias table), reports/plots/*.json (plot data for `dvc plots`) and reports/figures/*.png.

Every task writes every plot-data file (an empty list where a plot does not apply: no ROC for a language
model), so `dvc plots show/diff` loads them all without warnings whatever the task."""

from __future__ import annotations

from pathlib import Path

from lm.config import Params
from lm.io import atomic_write_json, require
from lm.paths import ENCODED, EVALUATION, FIGURES, METRICS, MODELS, PLOTS, RAW, SPLIT

PLOT_DATA = (
    "roc",
    "roc_baseline",
    "pr",
    "pr_baseline",
    "calibration",
    "confusion",
    "bias",
    "loss_by_position",
)
# headline metrics: what a row of `dvc exp show` needs; the rest goes to reports/evaluation.json
HEADLINE = (
    "n_test",
    "n_pos",
    "roc_auc",
    "pr_auc",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "brier",
    "log_loss",
    "loss",
    "perplexity",
    "bits_per_byte",
    "top5_accuracy",
    "n_tokens",
)
BASELINE_HEADLINE = ("roc_auc", "pr_auc", "f1", "accuracy", "perplexity", "bits_per_byte", "top5_accuracy")
BIAS_HEADLINE = ("subgroup_auc", "bpsn_auc", "bnsp_auc")


def run(
    params: Params,
    model_dir=MODELS,
    encoded_dir=ENCODED,
    split_dir=SPLIT,
    raw_dir=RAW,
    metrics_path=METRICS,
    evaluation_path=EVALUATION,
    plots_dir=PLOTS,
    figures_dir=FIGURES,
) -> None:
    import shutil

    from rich.console import Console

    from lm.data.batches import make_items
    from lm.data.encoded import Encoded
    from lm.data.split import load_split
    from lm.model.export import load_exported

    require(Path(model_dir) / "config.json", "lm train")
    model, config = load_exported(Path(model_dir))
    enc = Encoded.open(encoded_dir)
    enc.check_task(config["task"])
    if config["tokenizer_hash"] != enc.meta["tokenizer_hash"]:
        from lm.errors import LmError

        raise LmError(f"{model_dir} was trained with another tokenizer than {encoded_dir}: re-run `lm train`")
    parts = load_split(split_dir)
    test_rows = parts["test"]
    items = make_items(enc, test_rows, config["task"], enc.max_len)
    plots_dir, figures_dir = Path(plots_dir), Path(figures_dir)
    for d in (plots_dir, figures_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    plot_data: dict[str, list] = {name: [] for name in PLOT_DATA}
    if config["task"] == "classify":
        metrics = _classify(params, model, items, raw_dir, figures_dir, parts["train"], plot_data)
    else:
        metrics = _language(
            params, model, enc, items, config["task"], Path(model_dir), parts["train"], figures_dir, plot_data
        )
    for name, rows in plot_data.items():
        atomic_write_json(plots_dir / f"{name}.json", rows)
    metrics = {
        "task": config["task"],
        "attention": config["model"]["attention"],
        "n_test": len(test_rows),
        **metrics,
    }
    atomic_write_json(evaluation_path, metrics)
    atomic_write_json(metrics_path, headline_metrics(metrics))
    headline = {
        k: metrics[k]
        for k in ("roc_auc", "pr_auc", "f1", "perplexity", "accuracy", "bits_per_byte")
        if k in metrics
    }
    line = "evaluate: " + ", ".join(f"{k} {v:.4f}" for k, v in headline.items() if v is not None)
    if "baseline" in metrics:
        base = {k: metrics["baseline"].get(k) for k in headline}
        line += "; baseline " + ", ".join(f"{k} {v:.4f}" for k, v in base.items() if v is not None)
    Console(stderr=True).print(line)


def headline_metrics(full: dict) -> dict:
    """The columns `dvc exp show` gets: headline figures, the baseline's and the lift on them, the bias
    summary (params such as the task or attention kind are already columns of their own)."""
    out = {k: full[k] for k in HEADLINE if k in full}
    if "baseline" in full:
        out["baseline"] = {k: full["baseline"][k] for k in BASELINE_HEADLINE if k in full["baseline"]}
        out["lift"] = dict(full["lift"])
    if "bias" in full:
        power = full["bias"].get("power_mean", {})
        out["bias"] = {
            **{k: power.get(k) for k in BIAS_HEADLINE},
            "final_score": full["bias"].get("final_score"),
        }
    return out


CLASSIFY_LIFT = ("roc_auc", "pr_auc", "f1", "accuracy")
LANGUAGE_LIFT = ("perplexity", "loss", "accuracy", "top5_accuracy", "bits_per_byte")


def _classify(params: Params, model, items, raw_dir, figures_dir: Path, train_rows, plot_data: dict) -> dict:
    import numpy as np
    import pandas as pd

    from lm.eval.bias import bias_report
    from lm.eval.classification import classification_report, curve_rows
    from lm.infer.scoring import classifier_probs
    from lm.viz.plots import plot_calibration, plot_confusion, plot_pr, plot_roc

    threshold = params.threshold
    from lm.progress import progress

    with progress("eval", len(items), "rows") as meter:
        rows, probs = classifier_probs(model, items, params.eval.batch_size, meter)
    y_score = items.enc.targets[rows].astype(np.float64)
    report = classification_report(y_score, probs, threshold=threshold)
    y_true = y_score >= threshold
    y_pred = probs >= threshold
    curves = curve_rows(y_true, probs)
    for name in ("roc", "pr", "calibration"):
        plot_data[name] = curves[name]
    names = params.data.label_names
    plot_data["confusion"] = [
        {"actual": names[int(t)], "predicted": names[int(p)]} for t, p in zip(y_true, y_pred)
    ]
    corpus = pd.read_parquet(require(Path(raw_dir) / "corpus.parquet", "lm download"))
    base_report, base_curves = None, {"roc": [], "pr": []}
    if params.eval.baseline:
        from lm.eval.baselines import tfidf_logreg_probs

        texts = corpus["text"].fillna("").astype(str)
        train_y = items.enc.targets[train_rows] >= threshold
        base_probs = tfidf_logreg_probs(texts.iloc[train_rows].tolist(), train_y, texts.iloc[rows].tolist())
        base_report = classification_report(y_score, base_probs, threshold=threshold)
        base_curves = curve_rows(y_true, base_probs)
        for name in ("roc", "pr"):
            plot_data[f"{name}_baseline"] = base_curves[name]
    plot_roc(
        curves["roc"],
        figures_dir / "roc.png",
        auc=report["roc_auc"],
        baseline=base_curves["roc"],
        baseline_auc=base_report and base_report["roc_auc"],
    )
    plot_pr(
        curves["pr"],
        figures_dir / "pr.png",
        ap=report["pr_auc"],
        baseline=base_curves["pr"],
        baseline_ap=base_report and base_report["pr_auc"],
    )
    plot_calibration(curves["calibration"], figures_dir / "calibration.png")
    plot_confusion(y_true, y_pred, figures_dir / "confusion.png")

    metrics = {**report, "threshold": threshold}
    if base_report is not None:
        from lm.eval.baselines import lift

        metrics["baseline"] = {"model": "tfidf_logreg", **base_report}
        metrics["lift"] = lift(report, base_report, CLASSIFY_LIFT)
    identities, _ = params.data.identities_in(corpus.columns)
    if identities and report["roc_auc"] is not None:
        frame = corpus.iloc[rows][identities].reset_index(drop=True)
        frame["y_true"] = y_true
        frame["y_prob"] = probs
        metrics["bias"] = bias_report(frame, identities, "y_true", "y_prob", overall_auc=report["roc_auc"])
        plot_data["bias"] = [
            {"identity": name, **row} for name, row in metrics["bias"]["per_identity"].items()
        ]
    return metrics


def _language(
    params: Params,
    model,
    enc,
    items,
    task: str,
    model_dir: Path,
    train_rows,
    figures_dir: Path,
    plot_data: dict,
) -> dict:
    import numpy as np

    from lm.data.objectives import make_objective
    from lm.infer.scoring import lm_statistics
    from lm.tokenizer import load_tokenizer

    objective = make_objective(params.model_copy(update={"task": task}), enc, np.zeros(0, dtype=np.int64))
    token_bytes = None
    if task == "clm":
        tok = load_tokenizer(model_dir / "tokenizer")
        specials = set(tok.special_ids.values())
        token_bytes = np.array(
            [0 if i in specials else len(tok.token_bytes(i)) for i in range(tok.vocab_size)]
        )
    from lm.progress import progress
    from lm.viz.plots import plot_loss_by_position

    with progress("eval", len(items), "windows") as meter:
        stats = lm_statistics(model, objective, items, params.eval.batch_size, token_bytes, meter=meter)
    plot_data["loss_by_position"] = stats.pop("by_position")
    plot_loss_by_position(plot_data["loss_by_position"], figures_dir / "loss_by_position.png")
    if params.eval.baseline:
        from lm.eval.baselines import lift, ngram_statistics

        base = ngram_statistics(
            enc,
            train_rows,
            objective,
            items,
            task=task,
            batch_size=params.eval.batch_size,
            token_bytes=token_bytes,
        )
        stats["baseline"] = {"model": f"kneser_ney_{base['order']}gram", **base}
        stats["lift"] = lift(stats, base, LANGUAGE_LIFT)
    if task == "mlm":
        stats["masked_accuracy"] = stats["accuracy"]
    return stats
