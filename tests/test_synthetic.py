"""The embedded corpus: deterministic, Civil-Comments-shaped, learnable but noisy, with a detectable planted
bias.

References: scikit-learn (TF-IDF + logistic regression as a stand-in model, roc_auc_score for the Jigsaw
subgroup / BPSN AUCs, computed here by their definition on row subsets).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict, train_test_split

from lm.config import DEFAULT_IDENTITIES
from lm.data import synthetic as emb
from lm.data.synthetic import BIASED_IDENTITIES, IDENTITIES, SUPPORTED_IDENTITIES, generate_corpus
from lm.errors import LmError

UNBIASED = [c for c in SUPPORTED_IDENTITIES if c not in BIASED_IDENTITIES]


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return generate_corpus(6000, seed=0, identities=list(DEFAULT_IDENTITIES))


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    return generate_corpus(12000, seed=1, identities=list(DEFAULT_IDENTITIES))


def _labels(df: pd.DataFrame) -> np.ndarray:
    return (df["target"].to_numpy() >= 0.5).astype(int)


def _tfidf_lr_scores(texts: pd.Series, y: np.ndarray) -> np.ndarray:
    """Out-of-fold scores of a TF-IDF (word 1-2 grams) + logistic regression model for every row."""
    X = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit_transform(texts)
    return cross_val_predict(LogisticRegression(C=4.0, max_iter=2000), X, y, cv=3, method="predict_proba")[
        :, 1
    ]


def _bpsn_auc(y: np.ndarray, scores: np.ndarray, in_subgroup: np.ndarray) -> float:
    """Jigsaw BPSN AUC: background (not subgroup) positives vs subgroup negatives."""
    keep = (~in_subgroup & (y == 1)) | (in_subgroup & (y == 0))
    return roc_auc_score(y[keep], scores[keep])


# --- determinism ------------------------------------------------------------------------------------------


def test_same_seed_same_frame_and_different_seed_differs():
    a = generate_corpus(300, seed=7, identities=["muslim", "female"])
    b = generate_corpus(300, seed=7, identities=["muslim", "female"])
    pd.testing.assert_frame_equal(a, b)
    c = generate_corpus(300, seed=8, identities=["muslim", "female"])
    assert (a["text"] != c["text"]).mean() > 0.9
    assert not np.array_equal(a["target"].to_numpy(), c["target"].to_numpy())


def test_prefix_stable_and_texts_independent_of_identity_selection():
    full = generate_corpus(400, seed=3, identities=list(DEFAULT_IDENTITIES))
    head = generate_corpus(150, seed=3, identities=list(DEFAULT_IDENTITIES))
    pd.testing.assert_frame_equal(full.iloc[:150].reset_index(drop=True), head)
    some = generate_corpus(400, seed=3, identities=["black"])
    pd.testing.assert_frame_equal(
        some[["id", "text", "target", "black"]], full[["id", "text", "target", "black"]]
    )


# --- schema -----------------------------------------------------------------------------------------------


def test_schema(corpus):
    assert list(corpus.columns) == ["id", "text", "target", *DEFAULT_IDENTITIES]
    assert corpus.index.equals(pd.RangeIndex(len(corpus)))
    assert corpus["id"].tolist() == [str(i) for i in range(len(corpus))]
    assert all(isinstance(t, str) and t.strip() for t in corpus["text"])
    for col in ["target", *DEFAULT_IDENTITIES]:
        assert corpus[col].dtype == np.float64, col
    assert corpus["target"].notna().all()
    assert corpus["target"].between(0.0, 1.0).all()
    ident = corpus[DEFAULT_IDENTITIES].to_numpy()
    assert np.nanmin(ident) >= 0.0 and np.nanmax(ident) <= 1.0
    # a row is either annotated for every identity or for none
    nan_rows = np.isnan(ident)
    assert np.array_equal(nan_rows.any(axis=1), nan_rows.all(axis=1))


def test_bad_arguments_raise_lm_error():
    with pytest.raises(LmError, match="asian"):
        generate_corpus(10, seed=0, identities=["muslim", "asian"])
    with pytest.raises(LmError, match="n_rows"):
        generate_corpus(0, seed=0, identities=[])


@pytest.mark.slow  # a wall-clock budget: kept out of the fast suite, where a loaded machine would break it
def test_generation_speed():
    t0 = time.perf_counter()
    generate_corpus(6000, seed=0, identities=list(DEFAULT_IDENTITIES))
    t6k = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate_corpus(100_000, seed=0, identities=list(DEFAULT_IDENTITIES))
    t100k = time.perf_counter() - t0
    assert t6k < 1.0, f"6000 rows took {t6k:.2f} s"
    assert t100k < 10.0, f"100k rows took {t100k:.2f} s"


# --- text -------------------------------------------------------------------------------------------------


def test_text_is_varied_comment_shaped(corpus):
    texts = corpus["text"]
    words = Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    content = [w for w, n in words.items() if n >= 3 and len(w) >= 4]  # n >= 3: typos do not count
    assert len(content) >= 300
    n_sent = texts.str.count(r"[.?!](?:\s|$)")
    assert n_sent.min() >= 1 and n_sent.max() <= 8
    assert 1.5 <= n_sent.mean() <= 4.0
    assert (texts.str.len() <= 400).mean() >= 0.85
    assert len(set(texts)) > 0.9 * len(texts)
    has_emoji = texts.map(lambda t: any(ord(ch) > 0x2000 for ch in t))
    shouted = texts.str.contains(r"\b[A-Z]{4,} [A-Z]{3,}\b")
    assert 0.02 <= has_emoji.mean() <= 0.15
    assert 0.005 <= shouted.mean() <= 0.1
    assert texts.str.contains("!!").any() and texts.str.contains('"').any()


def test_marker_context_changes_toxicity(corpus):
    """Direct insults are judged toxic far more often than the same words negated or quoted; no marker, no
    toxicity."""
    t = corpus["target"]
    text = corpus["text"]
    direct = text.str.contains(r"(?i)\b(?:you are an? |shut up, you |go read a book, you )", regex=True)
    negated = text.str.contains("Nobody here is |No need to call people |I'm not calling anyone ")
    quoted = text.str.contains('He called .* in the interview|Calling people "|told protesters to "')
    markers = {
        w
        for m in (emb.NP_INSULT, emb.N_INSULT, emb.ADJ_INSULT, emb.DISMISS, emb.OBSCENE, emb.THREAT, emb.WTF)
        for w in m.words
    }
    any_marker = "|".join(re.escape(w) for w in sorted(markers, key=len, reverse=True))
    unmarked = ~text.str.lower().str.contains(rf"(?<![a-z])(?:{any_marker})(?![a-z])", regex=True)
    biased = (corpus[list(BIASED_IDENTITIES)] >= 0.5).any(axis=1)
    assert direct.sum() > 40 and negated.sum() > 40 and quoted.sum() > 40
    assert t[direct].mean() > 0.6
    assert t[negated].mean() < 0.2 and t[quoted].mean() < 0.2
    assert 0.5 <= unmarked.mean() <= 0.9
    assert (t[unmarked & ~biased] >= 0.5).mean() < 0.03


# --- target -----------------------------------------------------------------------------------------------


def test_target_is_a_fraction_of_4_to_10_annotators(corpus):
    allowed = {Fraction(v, k) for k in range(4, 11) for v in range(k + 1)}
    values = {Fraction(x).limit_denominator(10) for x in corpus["target"]}
    assert values <= allowed
    for x in corpus["target"].unique():  # exact, not only up to rounding
        assert any(abs(x * k - round(x * k)) < 1e-12 for k in range(4, 11))
    assert {0.0, 0.25, 0.5, 1.0} <= set(corpus["target"].unique())
    assert len(values) >= 15  # many k's show up


def test_positive_rate_like_civil_comments(corpus):
    y = _labels(corpus)
    assert 0.08 <= y.mean() <= 0.15
    middle = corpus["target"].between(0.01, 0.99)
    assert 0.1 <= middle.mean() <= 0.5  # annotators disagree on a fair share of rows: label noise


# --- identities -------------------------------------------------------------------------------------------


def test_identity_coverage_and_nan_share(corpus):
    ident = corpus[DEFAULT_IDENTITIES]
    annotated = ident.notna().all(axis=1)
    assert 0.45 <= 1 - annotated.mean() <= 0.55
    mentioned = (ident[annotated] >= 0.5).sum(axis=1)
    assert mentioned.max() <= 1  # at most one identity per comment
    assert 0.20 <= (mentioned == 1).mean() <= 0.30
    nonzero = ident[annotated].to_numpy()
    nonzero = nonzero[nonzero > 0]
    assert np.median(nonzero) >= 0.8  # "near 1": the fraction of identity annotators who saw the mention
    for name in DEFAULT_IDENTITIES:
        assert (ident[name] >= 0.5).sum() >= 30, name


def test_identity_annotations_match_the_text(corpus):
    """A row annotated with an identity mentions it; rows annotated 0 everywhere mention none."""
    words = {
        name: {
            w for phrase in ident.self_ + ident.group + ident.person for w in re.findall(r"[a-z]+", phrase)
        }
        for name, ident in IDENTITIES.items()
    }
    keys = {
        "male": r"\b(?:man|father|guy|men|fathers|guys|husband|dad|brother|son)\b",
        "female": r"\b(?:woman|mother|mom|women|mothers|female|wife|sister|daughter)\b",
        "homosexual_gay_or_lesbian": r"\b(?:gay|lesbian)\b",
        "christian": r"\b(?:christian|catholic|churchgoers?|pastor)\b",
        "jewish": r"\b(?:jew|jewish|rabbi|synagogue)\b",
        "muslim": r"\b(?:muslim|mosque|imam)\b",
        "black": r"\bblack\b",
        "white": r"\bwhite\b",
        "psychiatric_or_mental_illness": r"\b(?:mental|depression|anxiety|bipolar|schizophrenia|ptsd)\b",
    }
    lower = corpus["text"].str.lower()
    for name in DEFAULT_IDENTITIES:
        assert re.search(keys[name], " ".join(words[name]))
        member = corpus[name] >= 0.5
        assert lower[member].str.contains(keys[name]).mean() >= 0.95, name  # < 5 %: a typo in the mention
    none = corpus[DEFAULT_IDENTITIES].fillna(-1).eq(0).all(axis=1)
    for name in ["homosexual_gay_or_lesbian", "muslim", "jewish"]:
        assert not lower[none].str.contains(keys[name]).any(), name


def test_planted_bias_in_the_data(big):
    """Biased identities are mentioned more in toxic rows and over-labelled when the comment is civil."""
    y = _labels(big)
    annotated = big[DEFAULT_IDENTITIES].notna().all(axis=1).to_numpy()
    for name in BIASED_IDENTITIES:
        m = (big[name] >= 0.5).to_numpy()
        assert m[annotated & (y == 1)].mean() > 3 * m[annotated & (y == 0)].mean(), name
        assert y[m].mean() > 0.3, name
    for name in UNBIASED:
        m = (big[name] >= 0.5).to_numpy()
        assert y[m].mean() < 0.25, name


# --- learnability and the bias a model picks up -------------------------------------------------------------


def test_learnable_but_not_trivial(corpus):
    y = _labels(corpus)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y)
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = LogisticRegression(C=4.0, max_iter=2000).fit(vec.fit_transform(corpus["text"].iloc[tr]), y[tr])
    scores = clf.predict_proba(vec.transform(corpus["text"].iloc[te]))[:, 1]
    auc = roc_auc_score(y[te], scores)
    assert 0.90 <= auc <= 0.98, auc


def test_bias_metric_detects_planted_bias(big):
    """A TF-IDF+LR model learns 'identity term => toxic': BPSN AUC drops for the biased identities only."""
    y = _labels(big)
    scores = _tfidf_lr_scores(big["text"], y)
    overall = roc_auc_score(y, scores)
    bpsn = {name: _bpsn_auc(y, scores, (big[name] >= 0.5).to_numpy()) for name in DEFAULT_IDENTITIES}
    worst_unbiased = min(bpsn[c] for c in UNBIASED)
    for name in BIASED_IDENTITIES:
        assert bpsn[name] < worst_unbiased - 0.02, (name, bpsn)
    pooled_biased = _bpsn_auc(y, scores, (big[list(BIASED_IDENTITIES)] >= 0.5).any(axis=1).to_numpy())
    pooled_unbiased = _bpsn_auc(y, scores, (big[UNBIASED] >= 0.5).any(axis=1).to_numpy())
    assert pooled_biased < pooled_unbiased - 0.05
    assert pooled_unbiased > overall - 0.05  # unbiased identities behave like the background
