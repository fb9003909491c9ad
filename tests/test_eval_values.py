"""Evaluation checked by value: the scores of a fixed model against its logits computed directly with torch,
and every reported metric against scikit-learn on those scores (a flipped, shuffled or mis-aligned score
fails here, not only a missing key). The slow test trains the embedded pipeline and checks that it learns:
its test ROC-AUC above a floor and an obviously toxic text scored above an obviously benign one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SPECIALS, tiny_params, write_fake_encoded
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from lm.config import parse_params
from lm.data.batches import RowItems
from lm.data.encoded import Encoded
from lm.model.export import export_config, export_model, load_exported

N_DOCS = 400


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _params(**overrides):
    base = {
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
        "eval.baseline": False,
        "eval.batch_size": 7,
        "data.identity_columns": ["muslim"],
    }
    return parse_params(tiny_params(**{**base, **overrides}))


def _fresh_classifier(params, vocab_size: int = 64, max_len: int = 16, pad_id: int = SPECIALS["<|pad|>"]):
    from lm.model import build_model

    return build_model(
        params.model, task="classify", vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, seed=params.seed
    ).eval()


@torch.no_grad()
def _spread_head(model, logits: np.ndarray) -> np.ndarray:
    """Rescale the (linear) classifier head so that the given logits become standardised x 2: a fresh head's
    logits are ~0.01 apart, where p and 1 - p are hard to tell apart. Returns the new logits."""
    scale, mean = 2.0 / float(logits.std()), float(logits.mean())
    model.classifier.weight.mul_(scale)
    model.classifier.bias.mul_(scale).sub_(scale * mean)
    return (logits - mean) * scale


@torch.no_grad()
def _direct_logits(model, enc: Encoded, rows: np.ndarray) -> np.ndarray:
    """One row at a time, unpadded: the logit of each document with nothing else in its batch."""
    out = []
    for r in rows:
        n = int(enc.lengths[r])
        ids = torch.from_numpy(np.asarray(enc.tokens[r, :n], dtype=np.int64))[None]  # (1, n)
        out.append(float(model(ids, torch.ones_like(ids, dtype=torch.bool)).logits[0]))
    return np.array(out)


@pytest.fixture
def scored(tmp_path):
    """Fake encoded data whose targets the fixed model ranks well by construction: target = sigmoid(logit +
    noise). A correct evaluation reports a high ROC-AUC; flipped scores would report 1 - that."""
    root = tmp_path
    write_fake_encoded(root, "classify", n_docs=N_DOCS)
    params = _params()
    enc = Encoded.open(root / "data/encoded")
    model = _fresh_classifier(params)
    _spread_head(model, _direct_logits(model, enc, np.arange(N_DOCS)))
    logits = _direct_logits(model, enc, np.arange(N_DOCS))
    assert logits.std() > 1.5, "the fixed model's scores must be spread for the checks to mean something"
    rng = np.random.default_rng(0)
    targets = 1 / (1 + np.exp(-(logits + rng.normal(0, 1.0, N_DOCS))))
    np.save(root / "data/encoded/targets.npy", targets.astype(np.float32))
    enc = Encoded.open(root / "data/encoded")
    export_model(model, root / "models", export_config(params, enc), root / "data/tokenizer")
    muslim = np.where(rng.random(N_DOCS) < 0.5, 1.0, 0.0)
    muslim[rng.random(N_DOCS) < 0.1] = np.nan  # not annotated
    (root / "data/raw").mkdir(parents=True)
    pd.DataFrame({"text": [f"doc {i}" for i in range(N_DOCS)], "muslim": muslim}).to_parquet(
        root / "data/raw/corpus.parquet"
    )
    return root, params, enc, logits


def test_classifier_probs_are_the_sigmoid_of_each_documents_logit(scored):
    from lm.infer.scoring import classifier_probs

    root, _, enc, logits = scored
    model, _ = load_exported(root / "models")
    rows = np.load(root / "data/split/test.npy")
    items = RowItems(enc, rows)
    got_rows, probs = classifier_probs(model, items, batch_size=7)  # padded batches of mixed lengths
    assert np.array_equal(got_rows, rows)
    expected = torch.sigmoid(torch.from_numpy(logits[rows])).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_evaluate_reports_sklearn_metrics_of_the_models_scores(scored):
    import stages.evaluate

    root, params, enc, logits = scored
    reports = root / "reports"
    stages.evaluate.run(
        params,
        model_dir=root / "models",
        encoded_dir=root / "data/encoded",
        split_dir=root / "data/split",
        raw_dir=root / "data/raw",
        metrics_path=reports / "metrics.json",
        evaluation_path=reports / "evaluation.json",
        plots_dir=reports / "plots",
        figures_dir=reports / "figures",
    )
    full = json.loads((reports / "evaluation.json").read_text())
    headline = json.loads((reports / "metrics.json").read_text())

    rows = np.load(root / "data/split/test.npy")
    prob = 1 / (1 + np.exp(-logits[rows]))
    y_true = enc.targets[rows] >= params.threshold
    y_pred = prob >= params.threshold
    assert 0 < y_true.sum() < len(y_true)
    expected = {
        "roc_auc": roc_auc_score(y_true, prob),
        "pr_auc": average_precision_score(y_true, prob),
        "precision": precision_score(y_true, y_pred),
        "recall": recall_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred),
        "accuracy": accuracy_score(y_true, y_pred),
        "brier": brier_score_loss(y_true, prob),
        "log_loss": log_loss(y_true, prob),
    }
    for key, value in expected.items():
        assert full[key] == pytest.approx(value, abs=1e-6), key
        assert headline[key] == pytest.approx(value, abs=1e-6), key
    assert full["n_test"] == len(rows) and full["n_pos"] == int(y_true.sum())
    assert full["roc_auc"] > 0.75  # the targets were drawn from these scores: a flipped score reads < 0.25

    # brute force: the ROC-AUC is the share of (positive, negative) pairs ranked the right way round
    pos, neg = prob[y_true], prob[~y_true]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert full["roc_auc"] == pytest.approx(pairs, abs=1e-9)

    plots = reports / "plots"
    roc = json.loads((plots / "roc.json").read_text())
    assert np.trapezoid([r["tpr"] for r in roc], [r["fpr"] for r in roc]) == pytest.approx(
        expected["roc_auc"], abs=1e-9
    )
    cells = pd.DataFrame(json.loads((plots / "confusion.json").read_text())).value_counts()
    (tn, fp), (fn, tp) = confusion_matrix(y_true, y_pred)
    assert (cells[("non-toxic", "non-toxic")], cells[("non-toxic", "toxic")]) == (tn, fp)
    assert (cells.get(("toxic", "non-toxic"), 0), cells.get(("toxic", "toxic"), 0)) == (fn, tp)

    # the identity's subgroup AUC: the same ranking restricted to the rows that mention it
    corpus = pd.read_parquet(root / "data/raw/corpus.parquet")
    subgroup = corpus["muslim"].to_numpy()[rows] >= 0.5
    assert subgroup.sum() >= 10  # bias_report's min_size
    assert full["bias"]["per_identity"]["muslim"]["subgroup_auc"] == pytest.approx(
        roc_auc_score(y_true[subgroup], prob[subgroup]), abs=1e-9
    )


def test_predict_toxicity_is_the_sigmoid_of_the_logit():
    from lm.infer.predict import Trained
    from lm.tokenizer import Tokenizer

    tok = Tokenizer([], ["<|endoftext|>", "<|pad|>", "<|cls|>", "<|mask|>"])  # bytes only: 256 + 4 ids
    model = _fresh_classifier(_params(seed=3), vocab_size=tok.vocab_size, max_len=32, pad_id=tok.pad_id)
    texts = ["you are a complete idiot", "the council did well", "ok", "x" * 50, "what a lovely day", "no"]

    @torch.no_grad()
    def direct() -> np.ndarray:  # one text at a time, truncated to max_len like predict
        out = []
        for text in texts:
            ids = torch.tensor([([tok.cls_id] + tok.encode(text))[:32]])  # (1, n)
            out.append(float(model(ids, torch.ones_like(ids, dtype=torch.bool)).logits[0]))
        return np.array(out)

    _spread_head(model, direct())
    expected = 1 / (1 + np.exp(-direct()))
    trained = Trained(model, {"task": "classify", "max_len": 32, "threshold": 0.5}, tok)
    frame = trained.predict(texts, batch_size=4)
    assert np.abs(expected - 0.5).min() > 0.01  # far enough from 0.5 that 1 - p differs visibly
    np.testing.assert_allclose(frame["score"].to_numpy(), expected, atol=6e-5)  # printed to 4 decimals
    assert frame["label"].tolist() == ["toxic" if p >= 0.5 else "non-toxic" for p in expected]


# ------------------------------------------------------------------------------------------- it learns

# The pipeline tests' tiny config (400 rows, 17 steps) does not learn: its test ROC-AUC ranges 0.4-0.9 with
# the seed. This small one was measured to learn on the embedded corpus for every seed tried (see FLOOR).
LEARNS = {
    "data.n_rows": 2000,
    "tokenizer.vocab_size": 600,
    "train.min_steps": 200,
    "train.eval_every": 50,
    "train.batch_size": 32,
    "eval.baseline": False,
}
# measured over seeds 0-4: test ROC-AUC 0.93, 0.88, 0.95, 0.90, 0.88; TOXIC scored 0.87-0.90, BENIGN 0.07-0.10
# (the old pair "you are an idiot" / "what a lovely day" is out of the corpus's style: 4 seeds of 5 scored the
# lovely day 0.64-0.86, one of them above the idiot)
FLOOR = 0.80
TOXIC = "Shut up, you complete idiot!! You are so stupid."
BENIGN = "I think the new bike lane plan is a step in the right direction. Well said."


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_embedded_pipeline_learns(in_tmp, seed):
    import stages.download
    import stages.encode
    import stages.evaluate
    import stages.split
    import stages.tokenize
    import stages.train
    from lm.infer.predict import load_trained

    params = parse_params(tiny_params(seed=seed, **LEARNS))
    for stage in (
        stages.download,
        stages.tokenize,
        stages.encode,
        stages.split,
        stages.train,
        stages.evaluate,
    ):
        stage.run(params)
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["roc_auc"] > FLOOR, metrics
    scores = load_trained(Path("models")).predict([TOXIC, BENIGN])["score"].tolist()
    assert scores[0] > scores[1] + 0.2, scores
