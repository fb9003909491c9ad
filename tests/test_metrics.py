"""Metrics against hand-computed values, scikit-learn, brute-force formulas and torch references."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from lm.errors import LmError
from lm.eval.bias import bias_report, power_mean
from lm.eval.classification import classification_report, curve_rows, thin_indices
from lm.eval.language import LmAccumulator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------- classification_report


def test_report_hand_computed():
    y_score = np.array([0.9, 0.7, 0.2, 0.1, 0.6, 0.4])  # truth: 1 1 0 0 1 0
    y_prob = np.array([0.8, 0.3, 0.6, 0.1, 0.9, 0.2])  # pred:  1 0 1 0 1 0 -> TP 2, FN 1, FP 1, TN 2
    rep = classification_report(y_score, y_prob, threshold=0.5)
    # positives {0.8, 0.3, 0.9} vs negatives {0.6, 0.1, 0.2}: 8 of 9 pairs ranked right
    assert rep["roc_auc"] == pytest.approx(8 / 9)
    # ranked: 0.9 P, 0.8 P, 0.6 N, 0.3 P -> AP = 1/3 * (1 + 1 + 3/4)
    assert rep["pr_auc"] == pytest.approx(11 / 12)
    assert rep["precision"] == pytest.approx(2 / 3)
    assert rep["recall"] == pytest.approx(2 / 3)
    assert rep["f1"] == pytest.approx(2 / 3)
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert (rep["n"], rep["n_pos"]) == (6, 3)
    assert rep["brier"] == pytest.approx((0.04 + 0.49 + 0.36 + 0.01 + 0.01 + 0.04) / 6)
    expected_ll = -np.mean(np.log([0.8, 0.3, 0.4, 0.9, 0.9, 0.8]))
    assert rep["log_loss"] == pytest.approx(expected_ll)
    json.dumps(rep, allow_nan=False)  # plain Python numbers, JSON-ready


def test_report_threshold_is_inclusive():
    # a score / probability exactly at the threshold counts as positive on both sides
    rep = classification_report(np.array([0.5, 0.49]), np.array([0.5, 0.49]), threshold=0.5)
    assert (rep["n_pos"], rep["accuracy"], rep["precision"], rep["recall"]) == (1, 1.0, 1.0, 1.0)


def test_report_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y_score = rng.beta(0.5, 2.0, size=800)
    y_prob = np.clip(y_score + rng.normal(0, 0.2, size=800), 0.01, 0.99)
    threshold = 0.3
    rep = classification_report(y_score, y_prob, threshold=threshold)
    y_true, y_pred = y_score >= threshold, y_prob >= threshold
    assert rep["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, y_prob))
    assert rep["pr_auc"] == pytest.approx(skm.average_precision_score(y_true, y_prob))
    assert rep["precision"] == pytest.approx(skm.precision_score(y_true, y_pred))
    assert rep["recall"] == pytest.approx(skm.recall_score(y_true, y_pred))
    assert rep["f1"] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert rep["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert rep["brier"] == pytest.approx(np.mean((y_prob - y_true) ** 2))
    expected_ll = -np.mean(y_true * np.log(y_prob) + (1 - y_true) * np.log(1 - y_prob))
    assert rep["log_loss"] == pytest.approx(expected_ll)
    assert rep["n_pos"] == int(y_true.sum())


@pytest.mark.parametrize("scores", [[0.1, 0.2, 0.0], [0.9, 0.6, 1.0]], ids=["all-negative", "all-positive"])
def test_report_one_class_gives_none_aucs_without_warnings(scores):
    y_prob = np.array([0.2, 0.7, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = classification_report(np.array(scores), y_prob, threshold=0.5)
        curves = curve_rows(np.array(scores) >= 0.5, y_prob)
    assert rep["roc_auc"] is None and rep["pr_auc"] is None
    y_true = np.array(scores) >= 0.5
    assert rep["accuracy"] == pytest.approx(np.mean(y_true == (y_prob >= 0.5)))
    assert rep["brier"] == pytest.approx(np.mean((y_prob - y_true) ** 2))
    assert curves["roc"] == [] and curves["pr"] == []
    assert [r["fraction_positive"] for r in curves["calibration"]] == [float(y_true[0])] * 3


@pytest.mark.parametrize(
    ("score", "prob", "message"),
    [
        ([0.1, 0.9], [0.5], "align"),
        ([0.1, 0.9], [0.5, 1.2], r"\[0, 1\]"),
        ([0.1, 0.9], [0.5, float("nan")], "finite"),
        ([0.1, float("nan")], [0.5, 0.5], "NaN"),
        ([], [], "empty"),
    ],
)
def test_report_bad_input(score, prob, message):
    with pytest.raises(LmError, match=message):
        classification_report(np.array(score), np.array(prob), threshold=0.5)


# ---------------------------------------------------------------- curve_rows


def test_curve_rows_small_data_is_sklearn_exactly():
    y_true = np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)
    y_prob = np.array([0.1, 0.8, 0.35, 0.4, 0.9, 0.05, 0.6, 0.7])
    curves = curve_rows(y_true, y_prob)
    fpr, tpr, thr = skm.roc_curve(y_true, y_prob)
    assert [r["fpr"] for r in curves["roc"]] == pytest.approx(fpr.tolist())
    assert [r["tpr"] for r in curves["roc"]] == pytest.approx(tpr.tolist())
    assert curves["roc"][0]["threshold"] == 1.0  # sklearn's +inf, made JSON-safe
    assert [r["threshold"] for r in curves["roc"][1:]] == pytest.approx(thr[1:].tolist())
    precision, recall, _ = skm.precision_recall_curve(y_true, y_prob, drop_intermediate=True)
    assert [r["recall"] for r in curves["pr"]] == pytest.approx(recall[::-1].tolist())
    assert [r["precision"] for r in curves["pr"]] == pytest.approx(precision[::-1].tolist())
    frac, mean = calibration_curve(y_true, y_prob, n_bins=10)
    assert [r["mean_predicted"] for r in curves["calibration"]] == pytest.approx(mean.tolist())
    assert [r["fraction_positive"] for r in curves["calibration"]] == pytest.approx(frac.tolist())
    json.dumps(curves, allow_nan=False)


def test_curve_rows_thinned_keep_shape():
    rng = np.random.default_rng(1)
    y_true = rng.random(20_000) < 0.3
    y_prob = 1 / (1 + np.exp(-(rng.normal(size=20_000) + 1.5 * y_true)))
    curves = curve_rows(y_true, y_prob)
    roc, pr = curves["roc"], curves["pr"]
    assert 50 < len(roc) <= 200 and 50 < len(pr) <= 200
    fpr, tpr = np.array([r["fpr"] for r in roc]), np.array([r["tpr"] for r in roc])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # the thinned curve still integrates to the exact AUC and every full-curve point lies near it
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y_true, y_prob), abs=2e-3)
    full_fpr, full_tpr, _ = skm.roc_curve(y_true, y_prob)
    assert np.max(np.abs(np.interp(full_fpr, fpr, tpr) - full_tpr)) < 0.02
    recall = np.array([r["recall"] for r in pr])
    precision = np.array([r["precision"] for r in pr])
    assert recall[0] == 0.0 and recall[-1] == 1.0 and np.all(np.diff(recall) >= 0)
    ap_thin = np.sum(np.diff(recall) * precision[1:])  # step-wise AP over the kept points
    assert ap_thin == pytest.approx(skm.average_precision_score(y_true, y_prob), abs=0.01)


def test_thin_indices_keeps_ends_and_budget():
    x = np.linspace(0, 1, 1000)
    y = np.where(x < 0.5, 0.0, 1.0)  # a step: the jump must survive thinning
    idx = thin_indices(x, y, 50)
    assert idx[0] == 0 and idx[-1] == 999 and len(idx) <= 50 and np.all(np.diff(idx) > 0)
    kept = y[idx]
    assert np.any(kept == 0.0) and np.any(kept == 1.0)
    assert np.array_equal(thin_indices(x[:30], y[:30], 50), np.arange(30))


# ---------------------------------------------------------------- bias_report


def _brute_force_bias(df, identities, y_col, p_col, overall_auc, thr=0.5, p=-5, w=0.25, min_size=10):
    per, values = {}, {"subgroup_auc": [], "bpsn_auc": [], "bnsp_auc": []}
    for ident in identities:
        in_sub, sub_pos, sub_neg, bg_pos, bg_neg = [], [], [], [], []
        for i in range(len(df)):
            v = df[ident].iloc[i]
            member = (not pd.isna(v)) and v >= thr
            y = bool(df[y_col].iloc[i])
            in_sub.append(member)
            (sub_pos if member and y else sub_neg if member else bg_pos if y else bg_neg).append(i)
        size = sum(in_sub)
        if size < min_size or not sub_pos or not sub_neg:
            per[ident] = {"size": size, "subgroup_auc": None, "bpsn_auc": None, "bnsp_auc": None}
            continue

        def auc(pos, neg):
            if not pos or not neg:
                return None
            idx = pos + neg
            labels = [1] * len(pos) + [0] * len(neg)
            return skm.roc_auc_score(labels, df[p_col].iloc[idx].to_numpy())

        per[ident] = {
            "size": size,
            "subgroup_auc": auc(sub_pos, sub_neg),
            "bpsn_auc": auc(bg_pos, sub_neg),
            "bnsp_auc": auc(sub_pos, bg_neg),
        }
        for k in values:
            if per[ident][k] is not None:
                values[k].append(per[ident][k])
    means = {k: (sum(x**p for x in v) / len(v)) ** (1 / p) if v else None for k, v in values.items()}
    final = None if None in means.values() else w * overall_auc + w * sum(means.values())
    return per, means, final


def test_bias_report_matches_brute_force_with_nans():
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame({"y": rng.random(n) < 0.35})
    for name, frac in [("a", 0.3), ("b", 0.15), ("c", 0.08), ("rare", 0.01)]:
        col = np.where(rng.random(n) < frac, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.49, n))
        col[rng.random(n) < 0.4] = np.nan  # unannotated rows are never in the subgroup
        df[name] = col
    df["only_neg"] = np.where(~df["y"] & (rng.random(n) < 0.2), 1.0, 0.0)  # subgroup with one class
    # the model over-scores rows that mention identity "a": a planted bias the metrics must see
    df["p"] = np.clip(0.3 * df["y"] + 0.4 * rng.random(n) + 0.3 * (df["a"].fillna(0) >= 0.5), 0, 1)
    identities = ["a", "b", "c", "rare", "only_neg"]
    overall = skm.roc_auc_score(df["y"], df["p"])

    rep = bias_report(df, identities, "y", "p", overall_auc=overall)
    per, means, final = _brute_force_bias(df, identities, "y", "p", overall)
    for ident in identities:
        for key, expected in per[ident].items():
            got = rep["per_identity"][ident][key]
            assert got == (expected if expected is None else pytest.approx(expected)), (ident, key)
    assert rep["per_identity"]["rare"]["subgroup_auc"] is None  # too small: listed, skipped
    assert rep["per_identity"]["only_neg"]["bpsn_auc"] is None  # one class: listed, skipped
    assert rep["power_mean"] == pytest.approx(means)
    assert rep["final_score"] == pytest.approx(final)
    assert rep["per_identity"]["a"]["bpsn_auc"] < rep["per_identity"]["b"]["bpsn_auc"]  # the planted bias
    json.dumps(rep, allow_nan=False)


def test_bias_report_hand_checkable():
    df = pd.DataFrame(
        {
            "ident": [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, np.nan, 0.2],
            "other": [0.5, 0.5, np.nan, np.nan, 0.7, 0.9, np.nan, np.nan],  # 0.5 is in (>= threshold)
            "y": [1, 1, 0, 0, 1, 1, 0, 0],
            "p": [0.9, 0.4, 0.5, 0.1, 0.8, 0.7, 0.6, 0.2],
        }
    )
    rep = bias_report(df, ["ident", "other"], "y", "p", overall_auc=0.8, min_size=1)
    ident = rep["per_identity"]["ident"]
    # subgroup: pos {0.9, 0.4} vs neg {0.5, 0.1} -> 3 of 4 pairs
    # BPSN: background pos {0.8, 0.7} vs subgroup neg {0.5, 0.1} -> 4 of 4
    # BNSP: subgroup pos {0.9, 0.4} vs background neg {0.6, 0.2} -> 3 of 4
    assert ident == {"size": 4, "subgroup_auc": 0.75, "bpsn_auc": 1.0, "bnsp_auc": 0.75}
    # "other" (rows 0, 1, 4, 5) is all positive: listed with its size, skipped in the means
    assert rep["per_identity"]["other"] == {
        "size": 4,
        "subgroup_auc": None,
        "bpsn_auc": None,
        "bnsp_auc": None,
    }
    assert rep["power_mean"] == {"subgroup_auc": 0.75, "bpsn_auc": 1.0, "bnsp_auc": 0.75}
    assert rep["final_score"] == pytest.approx(0.25 * 0.8 + 0.25 * (0.75 + 1.0 + 0.75))


def test_power_mean_formula_and_limits():
    assert power_mean([0.5, 1.0], -5) == pytest.approx(((0.5**-5 + 1.0) / 2) ** (-1 / 5))
    assert power_mean([0.7], -5) == pytest.approx(0.7)
    assert power_mean([0.0, 0.9], -5) == 0.0  # the limit, not a ZeroDivisionError
    assert power_mean([], -5) is None
    # p = -5 leans to the worst subgroup: below the arithmetic mean
    assert power_mean([0.6, 0.9, 0.95], -5) < np.mean([0.6, 0.9, 0.95])


def test_bias_report_degenerate_and_bad_input():
    df = pd.DataFrame({"y": [False] * 20, "p": np.linspace(0, 1, 20), "g": [1.0] * 10 + [np.nan] * 10})
    rep = bias_report(df, ["g"], "y", "p", overall_auc=None)
    assert rep["per_identity"]["g"]["size"] == 10
    assert rep["power_mean"] == {"subgroup_auc": None, "bpsn_auc": None, "bnsp_auc": None}
    assert rep["final_score"] is None
    with pytest.raises(LmError, match="missing_identity"):
        bias_report(df, ["missing_identity"], "y", "p", overall_auc=0.5)
    with pytest.raises(LmError, match="boolean labels"):
        bias_report(df.assign(y=np.linspace(0, 1, 20)), ["g"], "y", "p", overall_auc=0.5)
    with pytest.raises(LmError, match="found text"):
        bias_report(df.assign(g=["yes"] * 20), ["g"], "y", "p", overall_auc=0.5)


def test_bias_report_on_real_civil_comments_rows():
    path = DATA / "civil_comments" / "train_head.csv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    df = pd.read_csv(path)  # identity cells are empty where a row was not annotated
    identities = ["male", "female", "christian", "white", "black", "muslim"]
    df["y"] = df["target"] >= 0.5
    df["p"] = np.random.default_rng(3).random(len(df))
    overall = skm.roc_auc_score(df["y"], df["p"]) if df["y"].nunique() == 2 else 0.5
    # 99 rows hold few identity mentions: threshold 0 puts every annotated row in the subgroup
    rep = bias_report(df, identities, "y", "p", overall_auc=overall, identity_threshold=0.0, min_size=3)
    per, means, final = _brute_force_bias(df, identities, "y", "p", overall, thr=0.0, min_size=3)
    assert any(v["subgroup_auc"] is not None for v in per.values())  # the sample exercises the AUC path
    assert rep["power_mean"] == pytest.approx(means) and rep["final_score"] == pytest.approx(final)
    for ident in identities:
        for key, expected in per[ident].items():
            got = rep["per_identity"][ident][key]
            assert got == (expected if expected is None else pytest.approx(expected)), (ident, key)


# ---------------------------------------------------------------- LmAccumulator


def test_lm_accumulator_matches_torch_on_concatenated_batches():
    torch.manual_seed(0)
    vocab = 50
    batches = [(torch.randn(n, vocab) * 3, torch.randint(0, vocab, (n,))) for n in (17, 5, 40, 1)]
    acc = LmAccumulator(top_k=5)
    for logits, targets in batches:
        acc.update(logits, targets)
    acc.add_bytes(100)
    acc.add_bytes(23)
    res = acc.result()

    logits = torch.cat([b[0] for b in batches]).double()
    targets = torch.cat([b[1] for b in batches])
    loss = F.cross_entropy(logits, targets).item()
    assert res["loss"] == pytest.approx(loss, rel=1e-6)
    assert res["perplexity"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert res["accuracy"] == pytest.approx((logits.argmax(-1) == targets).double().mean().item())
    top5 = logits.topk(5, dim=-1).indices
    assert res["top5_accuracy"] == pytest.approx((top5 == targets[:, None]).any(-1).double().mean().item())
    assert res["n_tokens"] == 63
    total_nats = F.cross_entropy(logits, targets, reduction="sum").item()
    assert res["bits_per_byte"] == pytest.approx(total_nats / math.log(2) / 123, rel=1e-6)


def test_lm_accumulator_hand_checkable_and_edges():
    acc = LmAccumulator(top_k=5)
    # uniform logits over 4 tokens: loss ln 4, perplexity 4; top-5 over a 4-token vocab covers everything
    acc.update(torch.zeros(3, 4), torch.tensor([0, 1, 3]))
    acc.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))  # nothing to count
    res = acc.result()
    assert res["loss"] == pytest.approx(math.log(4))
    assert res["perplexity"] == pytest.approx(4.0)
    assert res["top5_accuracy"] == 1.0
    assert res["n_tokens"] == 3
    assert "bits_per_byte" not in res  # no bytes were added
    with pytest.raises(LmError, match="no target tokens"):
        LmAccumulator().result()
    with pytest.raises(ValueError, match="expected logits"):
        acc.update(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


def test_lm_accumulator_state_merge_equals_single_pass():
    torch.manual_seed(1)
    logits, targets = torch.randn(30, 12), torch.randint(0, 12, (30,))
    whole, a, b = LmAccumulator(top_k=3), LmAccumulator(top_k=3), LmAccumulator(top_k=3)
    whole.update(logits, targets)
    whole.add_bytes(90)
    a.update(logits[:11], targets[:11])
    a.add_bytes(40)
    b.update(logits[11:], targets[11:])
    b.add_bytes(50)
    a.merge(b)  # what an all-reduce of state() over two ranks gives
    assert a.result() == pytest.approx(whole.result())
    assert "top3_accuracy" in a.result()
