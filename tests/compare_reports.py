"""Stand-in for training in the `lm compare` test repository (tests/compare_fixture.py copies it there as
make_reports.py): writes reports/metrics.json, reports/train/metrics.json, reports/plots/{roc,pr}.json and the
loss TSVs as lm's stages do, with figures computed from params.yaml, so the tests know every expected number.
reports/train/metrics.json has peak_memory_mb and n_params only when the file `cost` says yes."""

from __future__ import annotations

import json
import os

import yaml


def figures(params: dict) -> dict:
    """Every figure of a run as a function of its params (the seed moves them a little, as training would)."""
    model = params["model"]
    rope = bool((model.get("attention_options") or {}).get("use_rope"))
    quality = 0.01 * model["n_layers"] + 0.004 * (model["attention"] == "performer") + 0.002 * rope
    quality += 0.003 * params["seed"] + 0.005 * (params["data"]["source"] != "embedded")
    return {
        "task": params["task"],
        "roc_auc": 0.90 + quality,
        "pr_auc": 0.80 + quality,
        "perplexity": 60.0 - 100 * quality,
        "seconds": 100.0 + 10 * model["n_layers"] + params["seed"],
        "tokens_per_s": 9500.0 - 100 * model["n_layers"],
        "peak_memory_mb": 800.0 + 50 * model["n_layers"],
        "n_params": 100_000 + 40_000 * model["n_layers"],
    }


def write_reports(f: dict, with_cost: bool) -> None:
    os.makedirs("reports/plots", exist_ok=True)
    os.makedirs("reports/train/plots/metrics", exist_ok=True)
    if f["task"] == "classify":
        metrics = {
            "roc_auc": f["roc_auc"],
            "pr_auc": f["pr_auc"],
            "baseline": {"roc_auc": 0.93, "pr_auc": 0.84},
            "lift": {"roc_auc": f["roc_auc"] - 0.93, "pr_auc": f["pr_auc"] - 0.84},
        }
        roc = [{"fpr": 0.0, "tpr": 0.0}, {"fpr": 0.1, "tpr": f["roc_auc"] - 0.2}, {"fpr": 1.0, "tpr": 1.0}]
        pr = [
            {"recall": 0.0, "precision": 1.0},
            {"recall": 0.5, "precision": f["pr_auc"]},
            {"recall": 1.0, "precision": 0.2},
        ]
        loss = 0.3
    else:
        metrics = {
            "loss": 4.0,
            "perplexity": f["perplexity"],
            "baseline": {"perplexity": 80.0},
            "lift": {"perplexity": f["perplexity"] - 80.0},
        }
        roc, pr, loss = [], [], 4.0
    train = {"step": 20, "seconds": f["seconds"], "tokens_per_s": f["tokens_per_s"]}
    if with_cost:
        train.update(peak_memory_mb=f["peak_memory_mb"], n_params=f["n_params"])
    for path, content in (
        ("reports/metrics.json", metrics),
        ("reports/train/metrics.json", train),
        ("reports/plots/roc.json", roc),
        ("reports/plots/pr.json", pr),
    ):
        with open(path, "w") as fh:
            json.dump(content, fh)
    for name, steps in (("train_loss", range(1, 21)), ("val_loss", range(5, 21, 5))):
        rows = "".join(f"{s}\t{loss * (1 + 1 / s)}\n" for s in steps)
        with open(f"reports/train/plots/metrics/{name}.tsv", "w") as fh:
            fh.write(f"step\t{name}\n{rows}")


if __name__ == "__main__":
    with open("params.yaml") as fh, open("cost") as cost:
        write_reports(figures(yaml.safe_load(fh)), with_cost=cost.read().strip() == "yes")
