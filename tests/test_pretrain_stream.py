"""The pretrain stage streams its unlabelled source into shards (memory ~ one shard), adds the labelled train
split's texts, never val/test, and trains with its own budget (pretrain.tokens_per_epoch)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_params

from lm.config import parse_params


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny classify pipeline's data (download .. split) and an unlabelled CSV beside it."""
    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize

    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "it", "slept", "all", "day", "long"]
    unlabelled = pd.DataFrame({"body": [" ".join(rng.choice(words, 30)) + f" {i}" for i in range(300)]})
    unlabelled.loc[5, "body"] = ""  # a blemish: an empty cell is dropped, not pretrained on
    unlabelled.to_csv(root / "unlabelled.csv", index=False)
    raw = tiny_params(
        **{
            "pretrain.source": str(root / "unlabelled.csv"),
            "pretrain.text_column": "body",
            "pretrain.max_steps": 4,
            "pretrain.tokens_per_epoch": 2000,
            "data.shard_mb": 0.002,
            "train.threads": 1,
        }
    )
    params = parse_params(raw)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in (stages.download, stages.tokenize, stages.encode, stages.split):
            stage.run(params)
    finally:
        os.chdir(cwd)
    return root, params, unlabelled


def test_pretrain_corpus_is_streamed_into_shards_with_the_train_texts_only(labelled, tmp_path):
    import pyarrow.parquet as pq

    from stages.pretrain import pretrain_params, write_corpus

    root, params, unlabelled = labelled
    pre = pretrain_params(params)
    dest = tmp_path / "corpus.parquet"
    n_source, n_labelled = write_corpus(params, pre, root / "data/raw", root / "data/split", dest)
    got = pd.read_parquet(dest)
    train_rows = np.load(root / "data/split/train.npy")
    labelled_texts = pd.read_parquet(root / "data/raw/corpus.parquet", columns=["text"])["text"]
    expected = [t for t in unlabelled["body"].fillna("") if t.strip()] + labelled_texts.iloc[
        train_rows
    ].tolist()
    assert got["text"].tolist() == expected  # source order, then the train split's texts; no val/test text
    assert (n_source, n_labelled) == (299, len(train_rows))
    assert got["id"].tolist() == [str(i) for i in range(len(expected))] and got["target"].isna().all()
    assert pq.ParquetFile(dest).num_row_groups > 5  # written shard by shard (data.shard_mb), not as one block


def test_pretrain_stage_trains_with_its_token_budget(labelled):
    import stages.pretrain

    root, params, _ = labelled
    assert stages.pretrain.pretrain_params(params).train.tokens_per_epoch == 2000
    assert stages.pretrain.pretrain_params(params).encode.mode == "memmap"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        stages.pretrain.run(params)
    finally:
        os.chdir(cwd)
    report = json.loads((root / "pretrained" / "pretrain.json").read_text())
    assert report["enabled"] and report["rows"] == 299 and report["steps"] == 4
    assert (root / "pretrained" / "model.safetensors").exists()
