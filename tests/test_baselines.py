"""The classical baselines: TF-IDF + LR against scikit-learn run directly, the Kneser-Ney n-gram model against
a brute-force transcription of its formula, and both wired into the evaluate stage's metrics."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lm.eval.baselines import ngram_statistics, tfidf_logreg_probs
from lm.eval.ngram import KneserNey, left_contexts

TOXIC = ["you are an idiot", "shut up you fool", "what a stupid idiot", "idiot idiot", "go away loser fool"]
CLEAN = [
    "thank you for the article",
    "a thoughtful piece",
    "I agree with you",
    "nice work",
    "good point, thanks",
]


def test_baseline_tfidf_equals_sklearn_run_directly():
    train = [TOXIC[i % 5] + f" w{i}" for i in range(40)] + [CLEAN[i % 5] + f" w{i}" for i in range(60)]
    labels = np.array([True] * 40 + [False] * 60)
    test = [TOXIC[i] + " extra" for i in range(5)] + [CLEAN[i] + " extra" for i in range(5)]
    ours = tfidf_logreg_probs(train, labels, test)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    ref = (
        LogisticRegression(max_iter=1000)
        .fit(vec.fit_transform(train), labels)
        .predict_proba(vec.transform(test))[:, 1]
    )
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert roc_auc_score([1] * 5 + [0] * 5, ours) == 1.0


def test_baseline_tfidf_single_class_train_gives_constant():
    assert np.all(tfidf_logreg_probs(["a", "b"], np.array([False, False]), ["c"]) == 0.0)


def _brute_kn(streams, order, V):
    """Interpolated Kneser-Ney written out from the formula with dictionaries, one probability at a time."""
    grams = {k: Counter() for k in range(1, order + 1)}
    for s in streams:
        for k in range(1, order + 1):
            for i in range(len(s) - k + 1):
                grams[k][tuple(s[i : i + k])] += 1
    counts = {order: dict(grams[order])}
    for k in range(order - 1, 0, -1):  # continuation counts: distinct left extensions
        cont = Counter(g[1:] for g in grams[k + 1])
        counts[k] = dict(cont)

    def discount(c):
        n1 = sum(1 for v in c.values() if v == 1)
        n2 = sum(1 for v in c.values() if v == 2)
        return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5

    D = {k: discount(counts[k]) for k in counts}
    by_ctx = {k: defaultdict(dict) for k in counts}
    for k in counts:
        for g, c in counts[k].items():
            by_ctx[k][g[:-1]][g[-1]] = c
    total1 = sum(counts[1].values())

    def p(w, ctx):
        if not ctx:
            return max(counts[1].get((w,), 0) - D[1], 0) / total1 + D[1] * len(counts[1]) / total1 / V
        k = len(ctx) + 1
        row = by_ctx[k].get(tuple(ctx))
        if row is None or any(t < 0 for t in ctx):
            return p(w, ctx[1:])
        tot = sum(row.values())
        return max(row.get(w, 0) - D[k], 0) / tot + D[k] * len(row) / tot * p(w, ctx[1:])

    return p


@pytest.mark.parametrize("order", [2, 3])
def test_baseline_kneser_ney_equals_brute_force_formula(order):
    rng = np.random.default_rng(order)
    V = 12
    streams = [rng.integers(0, V, n) for n in (50, 37, 80)]
    # a skewed stream so some n-grams repeat and the discount comes from real count-of-counts
    streams.append(np.array([0, 1, 2] * 20 + [3, 4] * 10))
    model = KneserNey(order, V).fit(streams)
    brute = _brute_kn([s.tolist() for s in streams], order, V)
    contexts = rng.integers(-1, V, (40, order - 1))
    contexts[:5] = [[0, 1][-(order - 1) :]] * 5  # frequent contexts
    ours = model.probs(contexts)
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-12)
    ref = np.array([[brute(w, list(ctx)) for w in range(V)] for ctx in contexts])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_baseline_left_contexts_for_next_token_and_masked_positions():
    ids = np.array([[5, 6, 7, 8]])
    where = (np.array([0, 0]), np.array([0, 2]))
    np.testing.assert_array_equal(left_contexts(ids, where, 2, inclusive=True), [[-1, 5], [6, 7]])
    np.testing.assert_array_equal(left_contexts(ids, where, 2, inclusive=False), [[-1, -1], [5, 6]])


@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_baseline_ngram_scores_the_positions_lm_scores(tmp_path, task):
    """Same items, same objective: the n-gram sees exactly the targets the model's evaluation sees."""
    from conftest import write_fake_encoded

    from lm.config import Params
    from lm.data.batches import make_items
    from lm.data.encoded import Encoded
    from lm.data.objectives import make_objective
    from lm.data.split import load_split
    from lm.infer.scoring import lm_statistics
    from lm.model import build_model

    write_fake_encoded(tmp_path, task, n_docs=60)
    enc = Encoded.open(tmp_path / "data/encoded")
    parts = load_split(tmp_path / "data/split")
    params = Params.model_validate(
        {"task": task, "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1}}
    )
    objective = make_objective(params, enc, parts["train"])
    items = make_items(enc, parts["test"], task, enc.max_len)
    model = build_model(
        params.model, task=task, vocab_size=enc.vocab_size, max_len=enc.max_len, pad_id=enc.pad_id
    )
    ours = lm_statistics(model, objective, items, 8, None)
    base = ngram_statistics(enc, parts["train"], objective, items, task=task, batch_size=5, token_bytes=None)
    assert base["n_tokens"] == ours["n_tokens"] > 0
    # the fake corpus draws tokens uniformly from 60 ordinary ids: the n-gram cannot do much better than 60
    assert 20 < base["perplexity"] < 120
    assert 0 <= base["top5_accuracy"] <= 1
