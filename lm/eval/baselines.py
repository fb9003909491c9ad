"""Classical baselines fitted on the same train rows and scored on the same test rows as lm's model, so every
report says whether the transformer earns its cost.

- classify: TF-IDF over word 1-2 grams with sublinear tf, then logistic regression (scikit-learn, defaults
  otherwise): the "ten-line baseline" a reviewer would write first.
- mlm / clm: an interpolated Kneser-Ney trigram model over lm's own token ids (lm.eval.ngram), trained on the
  train split's token stream and asked for the very positions lm predicts (the same windows, the same masks),
  so perplexity, accuracy, top-5 and bits per byte compare like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lm.data.masking import IGNORE_INDEX

NGRAM_ORDER = 3
TFIDF = dict(ngram_range=(1, 2), sublinear_tf=True)
LOGREG = dict(max_iter=1000)


def tfidf_logreg_probs(
    train_texts: Sequence[str], train_labels: np.ndarray, test_texts: Sequence[str]
) -> np.ndarray:
    """P(positive) for each test text from TF-IDF (word 1-2 grams, sublinear tf) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(train_labels, dtype=bool)
    if labels.all() or not labels.any():
        return np.full(len(test_texts), float(labels.mean()) if len(labels) else 0.5)
    vectorizer = TfidfVectorizer(**TFIDF)
    features = vectorizer.fit_transform(list(train_texts))
    model = LogisticRegression(**LOGREG).fit(features, labels)
    return model.predict_proba(vectorizer.transform(list(test_texts)))[:, 1]


def ngram_statistics(
    enc,
    train_docs: np.ndarray,
    objective,
    items,
    *,
    task: str,
    batch_size: int,
    token_bytes: np.ndarray | None,
    order: int = NGRAM_ORDER,
    top_k: int = 5,
) -> dict[str, Any]:
    """Kneser-Ney n-gram loss / perplexity / accuracy / top-k (/ bits per byte) over exactly the positions
    `lm_statistics` scores: the same items, prepared by the same objective (mlm: the same fixed masks; the
    n-gram sees the corrupted left context, where a <|mask|> makes it back off)."""
    from lm.data.batches import doc_runs
    from lm.eval.language import LmAccumulator
    from lm.eval.ngram import KneserNey, left_contexts

    runs = zip(*doc_runs(enc, train_docs))
    model = KneserNey(order, enc.vocab_size).fit(
        np.asarray(enc.tokens[lo:hi], dtype=np.int64) for lo, hi in runs
    )
    acc = LmAccumulator(top_k=top_k)
    for lo in range(0, len(items), batch_size):
        batch = objective.prepare(items.batch(np.arange(lo, min(lo + batch_size, len(items)))), train=False)
        labels = batch["labels"].numpy()
        where = np.nonzero(labels != IGNORE_INDEX)
        if not len(where[0]):
            continue
        ctx = left_contexts(batch["input_ids"].numpy(), where, order - 1, inclusive=task == "clm")
        targets = labels[where]
        for c in range(0, len(targets), 512):
            p = model.probs(ctx[c : c + 512])
            acc.update(torch.from_numpy(np.log(p)), torch.from_numpy(targets[c : c + 512]))
        if token_bytes is not None:
            acc.add_bytes(int(token_bytes[targets].sum()))
    out = acc.result()
    out["order"] = order
    return out


def lift(model: dict[str, Any], baseline: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """lm minus baseline for each headline metric both have (positive = lm higher)."""
    return {
        k: float(model[k]) - float(baseline[k])
        for k in keys
        if model.get(k) is not None and baseline.get(k) is not None
    }
