"""Streaming data with bounded memory: download writes data/raw/corpus.parquet in shards (row groups) of
data.shard_mb while it reads the source chunk by chunk; tokenizer and encode read the shards one at a time.

References: pandas reading the whole source file at once (the rows, in order, and their values), the
single-shard pipeline (tokenizer merges, encoded tokens must be byte-identical), tracemalloc (the download's
peak Python memory does not grow with the corpus), and a hand-made hub (local files standing in for a hub
dataset's data files) for the shard cache's least-recently-used eviction.
"""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import tiny_params

from lm.config import DataConfig, parse_params
from lm.data import hub_cache, sources
from lm.data.raw import CORPUS, RawCorpus
from lm.data.sources import load_corpus
from lm.errors import LmError
from stages import download, encode, tokenize

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "rain",
    "fell",
    "over",
    "quiet",
    "hills",
    "and",
    "people",
    "talked",
    "about",
    "taxes",
    "roads",
    "schools",
    "music",
    "football",
    "weather",
    "prices",
    "coffee",
    "trains",
]


def _docs(n: int, seed: int = 0, words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, words))) + "." for _ in range(n)]


def _table(n: int, seed: int = 0, words: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    muslim = rng.random(n).round(3)
    muslim[rng.random(n) < 0.5] = np.nan
    return pd.DataFrame(
        {
            "uid": [f"u{i}" for i in range(n)],
            "body": _docs(n, seed, words),
            "tox": rng.random(n).round(4),
            "muslim": muslim,
        }
    )


def _write(path: Path, frame: pd.DataFrame) -> Path:
    kind = path.suffix
    if kind == ".csv":
        frame.to_csv(path, index=False)
    elif kind == ".parquet":
        frame.to_parquet(path, index=False, row_group_size=97)
    elif kind == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        path.write_text("\n\n".join(frame["body"]) + "\n", encoding="utf-8")
    return path


def _params(source: Path, shard_mb: float, task: str = "classify", **over):
    raw = tiny_params(
        task=task,
        **{
            "data.source": str(source),
            "data.text_column": "body",
            "data.target_column": "tox" if task == "classify" else None,
            "data.id_column": "uid" if task == "classify" else None,
            "data.identity_columns": ["muslim"],
            "data.shard_mb": shard_mb,
            **over,
        },
    )
    return parse_params(raw)


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl", "txt"])
def test_stream_shards_download_writes_bounded_shards_with_all_rows_in_order(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(sources, "READ_ROWS", 53)  # many source chunks, cut across shard boundaries
    frame = _table(700)
    source = _write(tmp_path / f"in.{kind}", frame)
    shard_mb = 0.004  # 4,000 bytes of text per shard: ~25 shards
    task = "mlm" if kind == "txt" else "classify"
    download.run(_params(source, shard_mb, task), out_dir=tmp_path / "raw")

    pf = pq.ParquetFile(tmp_path / "raw" / CORPUS)
    assert pf.num_row_groups >= 15
    texts = frame["body"].tolist()
    got = pd.read_parquet(tmp_path / "raw" / CORPUS)
    assert got["text"].tolist() == texts  # every row, in source order
    if kind != "txt":
        assert got["id"].tolist() == frame["uid"].tolist()
        np.testing.assert_array_equal(got["target"].to_numpy(), frame["tox"].to_numpy())
        np.testing.assert_array_equal(got["muslim"].to_numpy(), frame["muslim"].to_numpy())
    # each shard holds at most shard_mb of text, and is full unless it is the last one
    start = 0
    for i in range(pf.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        size = sum(len(t.encode()) for t in texts[start : start + n])
        assert size <= shard_mb * 1e6
        if i < pf.num_row_groups - 1:
            assert size + len(texts[start + n].encode()) > shard_mb * 1e6
        start += n
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["shards"]["n"] == pf.num_row_groups and sum(manifest["shards"]["rows"]) == len(texts)
    assert manifest["n_kept"] == len(texts) and manifest["n_chars"] == sum(map(len, texts))


def test_stream_shards_chunked_reading_keeps_stats_and_row_numbers(tmp_path, monkeypatch):
    """Chunks change nothing: stats equal the one-chunk read, and errors name the source row across chunks."""
    frame = _table(300)
    frame.loc[[10, 150], "body"] = "  "  # dropped, counted
    path = _write(tmp_path / "in.csv", frame)
    cfg = DataConfig(
        source=str(path),
        text_column="body",
        target_column="tox",
        id_column="uid",
        identity_columns=["muslim"],
    )
    whole, whole_stats = load_corpus(cfg, task="classify", seed=0)
    monkeypatch.setattr(sources, "READ_ROWS", 7)
    chunked, stats = load_corpus(cfg, task="classify", seed=0)
    pd.testing.assert_frame_equal(chunked, whole)
    assert stats.n_dropped_empty == 2 and stats.n_positive == whole_stats.n_positive
    assert stats.target_mean == pytest.approx(whole_stats.target_mean, rel=1e-12)
    assert (
        stats.n_identity_annotated
        == whole_stats.n_identity_annotated
        == int(frame["muslim"].drop([10, 150]).notna().sum())
    )

    bad = frame.copy()
    bad["tox"] = bad["tox"].astype(object)
    bad.loc[200, "tox"] = "high"
    with pytest.raises(LmError, match=r"not numeric at row 200 \(id u200\)"):
        load_corpus(
            cfg.model_copy(update={"source": str(_write(tmp_path / "bad.csv", bad))}), task="classify", seed=0
        )
    dup = frame.copy()
    dup.loc[250, "uid"] = "u3"  # a duplicate 35 chunks after the first
    with pytest.raises(LmError, match="duplicate value 'u3'"):
        load_corpus(
            cfg.model_copy(update={"source": str(_write(tmp_path / "dup.csv", dup))}), task="classify", seed=0
        )


def test_stream_shards_download_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    """Peak Python memory of a download (tracemalloc: pandas and numpy buffers included) at 4x the corpus
    stays within 25% of the 1x peak, while the shard count grows 4x. Both files exceed the 1 MiB blocks in
    which the source is hashed and its encoding checked."""
    monkeypatch.setattr(sources, "READ_ROWS", 100)

    def peak(n: int, name: str) -> tuple[int, int]:
        source = _write(tmp_path / f"{name}.csv", _table(n, seed=n, words=300))
        params = _params(source, 0.1)
        tracemalloc.start()
        download.run(params, out_dir=tmp_path / name)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, RawCorpus.open(tmp_path / name).n_shards

    peak(300, "warm")  # imports and caches outside the measurement
    small, small_shards = peak(1_500, "small")
    large, large_shards = peak(6_000, "large")
    assert large_shards >= 3.5 * small_shards
    assert large <= 1.25 * small, (small, large)


def test_stream_shards_tokenizer_and_encode_equal_the_single_shard_result(tmp_path):
    source = _write(tmp_path / "in.csv", _table(600))
    for task in ("classify", "clm"):
        outs = {}
        for name, shard_mb in (("one", 100.0), ("many", 0.003)):
            root = tmp_path / task / name
            params = _params(source, shard_mb, task)
            download.run(params, out_dir=root / "raw")
            tokenize.run(params, raw_dir=root / "raw", out_dir=root / "tokenizer")
            encode.run(
                params, raw_dir=root / "raw", tokenizer_dir=root / "tokenizer", out_dir=root / "encoded"
            )
            outs[name] = root
        one, many = outs["one"], outs["many"]
        assert RawCorpus.open(one / "raw").n_shards == 1 and RawCorpus.open(many / "raw").n_shards > 10
        for f in ("merges.txt", "vocab.json"):
            assert (one / "tokenizer" / f).read_bytes() == (many / "tokenizer" / f).read_bytes()
        for f in ("tokens.bin", "targets.npy", "lengths.npy" if task == "classify" else "offsets.npy"):
            assert (one / "encoded" / f).read_bytes() == (many / "encoded" / f).read_bytes(), f


def test_stream_shards_encode_matches_a_direct_encoding(tmp_path):
    """The classify rows written block by block equal <|cls|> + tokens, truncated and padded, row by row."""
    from lm.data.encoded import Encoded
    from lm.tokenizer import Tokenizer

    source = _write(tmp_path / "in.csv", _table(300))
    params = _params(source, 0.002, "classify", **{"encode.max_len": 12})
    download.run(params, out_dir=tmp_path / "raw")
    tokenize.run(params, raw_dir=tmp_path / "raw", out_dir=tmp_path / "tok")
    from lm.data import encode_corpus

    encode_corpus_block = encode_corpus.encode_rows.__kwdefaults__["block_rows"]
    encode_corpus.encode_rows.__kwdefaults__["block_rows"] = 7  # several partial blocks
    try:
        encode.run(params, raw_dir=tmp_path / "raw", tokenizer_dir=tmp_path / "tok", out_dir=tmp_path / "enc")
    finally:
        encode_corpus.encode_rows.__kwdefaults__["block_rows"] = encode_corpus_block
    tok = Tokenizer.load(tmp_path / "tok")
    enc = Encoded.open(tmp_path / "enc")
    for i, text in enumerate(_table(300)["body"]):
        row = ([tok.cls_id] + tok.encode(text))[:12]
        assert enc.tokens[i, : len(row)].tolist() == row and enc.lengths[i] == len(row)
        assert (enc.tokens[i, len(row) :] == tok.pad_id).all()


def test_stream_shards_tokenizer_sample_spreads_over_every_shard(tmp_path):
    source = _write(tmp_path / "in.csv", _table(1000))
    download.run(_params(source, 0.005), out_dir=tmp_path / "raw")
    raw = RawCorpus.open(tmp_path / "raw")
    texts = _table(1000)["body"].tolist()
    starts = raw.shard_rows()
    total = sum(len(t.encode()) for t in texts)
    sample = list(raw.sample_texts(total // 4))
    assert 0.15 * total < sum(len(t.encode()) for t in sample) <= 0.3 * total
    # the leading rows of every shard, in order: the sample reaches the last shard
    expected = []
    for i in range(raw.n_shards):
        n = starts[i + 1] - starts[i]
        expected += texts[starts[i] : starts[i] + int(np.ceil(len(sample) / len(texts) * n + 1))]
    assert set(sample) <= set(expected) and sample[-1] in texts[starts[-2] :]
    assert list(raw.sample_texts(None)) == texts


# --- the hub shard cache (data.cache_dir), with the hub replaced by local files ----------------------------


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub dataset of 4 Parquet data files (same shape as a hub dataset's) served from a local folder."""
    remote = tmp_path / "remote"
    names = [f"data/train-{k:05d}-of-00004.parquet" for k in range(4)]
    frames = [
        _table(150, seed=k).assign(uid=lambda f, k=k: [f"{k}-{i}" for i in range(len(f))]) for k in range(4)
    ]
    for name, frame in zip(names, frames):
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(remote / name, index=False)
    fetched: list[str] = []

    def data_files(dataset, config, split, revision):
        assert (dataset, config, split) == ("owner/corpus", None, "train")
        return list(names)

    def fetch(dataset, filename, revision, dest):
        fetched.append(filename)
        dest.write_bytes((remote / filename).read_bytes())

    monkeypatch.setattr(hub_cache, "data_files", data_files)
    monkeypatch.setattr(hub_cache, "fetch", fetch)
    return names, frames, fetched, remote


def test_stream_shards_hub_cache_streams_every_file_and_evicts_least_recently_used(tmp_path, fake_hub):
    names, frames, fetched, remote = fake_hub
    size = max((remote / n).stat().st_size for n in names)
    cfg = DataConfig(
        source="hf:owner/corpus",
        text_column="body",
        target_column="tox",
        id_column="uid",
        identity_columns=["muslim"],
        cache_dir=str(tmp_path / "cache"),
        cache_max_gb=2.5 * size / 1e9,
    )
    df, stats = load_corpus(cfg, task="classify", seed=0)
    whole = pd.concat(frames, ignore_index=True)
    assert df["text"].tolist() == whole["body"].tolist() and df["id"].tolist() == whole["uid"].tolist()
    assert fetched == names and stats.details["data_files"] == 4
    cache = hub_cache.ShardCache(tmp_path / "cache", int(2.5 * size))
    kept = [p.name for p in cache.files()]
    assert kept == [Path(n).name for n in names[2:]]  # the two most recently used fit; the oldest went first
    assert cache.size() <= 2.5 * size

    fetched.clear()
    capped, _ = load_corpus(cfg.model_copy(update={"max_rows": 200}), task="classify", seed=0)
    assert capped["id"].tolist() == whole["uid"].tolist()[:200]
    assert fetched == names[:2]  # files 0 and 1 had been evicted; the read stops inside file 1
    assert [p.name for p in cache.files()] == [Path(n).name for n in names[:2]]  # 2 and 3 evicted now


def test_stream_shards_hub_cache_keeps_the_file_in_use_even_when_too_big(tmp_path):
    cache = hub_cache.ShardCache(tmp_path / "c", max_bytes=10)
    a = cache.get("ds/main/a.parquet", lambda dest: dest.write_bytes(b"x" * 50))
    assert a.exists() and cache.files() == [a]
    b = cache.get("ds/main/b.parquet", lambda dest: dest.write_bytes(b"y" * 5))
    assert not a.exists() and cache.files() == [b]
    calls = []
    assert (
        cache.get("ds/main/b.parquet", lambda dest: calls.append(dest)) == b and calls == []
    )  # a hit: no fetch


def test_stream_shards_hub_files_without_a_column(tmp_path, fake_hub):
    """A later data file without an identity column: its rows are unannotated (NaN), not a crash; without the
    target column: one line naming the file and the column."""
    names, frames, _, remote = fake_hub
    frames[2].drop(columns=["muslim"]).to_parquet(remote / names[2], index=False)
    cfg = DataConfig(
        source="hf:owner/corpus",
        text_column="body",
        target_column="tox",
        id_column="uid",
        identity_columns=["muslim"],
        cache_dir=str(tmp_path / "cache"),
    )
    df, _ = load_corpus(cfg, task="classify", seed=0)
    third = df["id"].str.startswith("2-")
    assert third.sum() == 150 and df.loc[third, "muslim"].isna().all()
    np.testing.assert_array_equal(df.loc[df["id"].str.startswith("1-"), "muslim"], frames[1]["muslim"])
    frames[3].drop(columns=["tox"]).to_parquet(remote / names[3], index=False)
    with pytest.raises(LmError, match=f"{names[3]}: no target column 'tox'"):
        load_corpus(cfg.model_copy(update={"cache_dir": str(tmp_path / "cache2")}), task="classify", seed=0)


def test_stream_shards_download_reads_a_streamed_hub_dataset_into_shards(tmp_path, fake_hub, monkeypatch):
    """download of an hf: source through the cache writes the same sharded corpus as the files read
    locally."""
    names, frames, _, _ = fake_hub
    monkeypatch.setattr("lm.data.fingerprint.hub_revision", lambda dataset, revision: "abc123")
    params = _params(
        Path("unused"), 0.003, **{"data.source": "hf:owner/corpus", "data.cache_dir": str(tmp_path / "cache")}
    )
    download.run(params, out_dir=tmp_path / "raw")
    got = pd.read_parquet(tmp_path / "raw" / CORPUS)
    assert got["id"].tolist() == pd.concat(frames)["uid"].tolist()
    assert RawCorpus.open(tmp_path / "raw").n_shards > 4
    assert (tmp_path / "cache" / "owner__corpus" / "abc123" / names[0]).exists()


# --- encode.mode: on_the_fly --------------------------------------------------------------------------------


def _both_modes(tmp_path: Path, task: str, n: int = 400):
    """The same raw corpus (many shards) and tokenizer, encoded as memmap and on the fly; the split."""
    from lm.data.encoded import Encoded
    from lm.data.split import load_split
    from stages import split

    tmp_path.mkdir(parents=True, exist_ok=True)
    source = _write(tmp_path / "in.csv", _table(n))
    params = _params(source, 0.003, task, **{"encode.max_len": 16})
    root = tmp_path / task
    download.run(params, out_dir=root / "raw")
    tokenize.run(params, raw_dir=root / "raw", out_dir=root / "tok")
    encs = {}
    for mode in ("memmap", "on_the_fly"):
        p = params.model_copy(update={"encode": params.encode.model_copy(update={"mode": mode})})
        encode.run(p, raw_dir=root / "raw", tokenizer_dir=root / "tok", out_dir=root / mode)
        encs[mode] = Encoded.open(root / mode)
    split.run(params, encoded_dir=root / "memmap", out_dir=root / "split", report=root / "split.json")
    return params, encs["memmap"], encs["on_the_fly"], load_split(root / "split")


@pytest.mark.parametrize("task", ["classify", "clm", "mlm"])
def test_on_the_fly_gives_the_same_batches_as_memmap_for_the_same_seed(tmp_path, task):
    import torch

    from lm.data.batches import make_items
    from lm.train.stream import TrainStream

    _, memmap, fly, parts = _both_modes(tmp_path, task)
    assert not (fly.root / "tokens.bin").exists() and fly.meta["mode"] == "on_the_fly"
    streams = [
        TrainStream(
            make_items(enc, parts["train"], task, enc.max_len), seed=3, batch_size=8, grad_accum_steps=2
        )
        for enc in (memmap, fly)
    ]
    steps = 0
    for epoch in range(2):
        for step in range(streams[0].steps_in_epoch(epoch)):
            a, b = (s.micro_batches(epoch, step) for s in streams)
            for x, y in zip(a, b):
                assert x.keys() == y.keys()
                for key in x:
                    assert torch.equal(x[key], y[key]), (epoch, step, key)
            steps += 1
    assert steps >= 6


def test_on_the_fly_tokens_index_like_the_memmap(tmp_path):
    """Any slice of the stream and any rows of the row layout read the same values from both modes."""
    rng = np.random.default_rng(0)
    _, memmap, fly, _ = _both_modes(tmp_path / "s", "clm")
    total = memmap.tokens.shape[0]
    for _ in range(50):
        lo = int(rng.integers(0, total))
        hi = int(rng.integers(lo, min(total, lo + 300) + 1))
        np.testing.assert_array_equal(fly.tokens[lo:hi], memmap.tokens[lo:hi])
    np.testing.assert_array_equal(fly.tokens[0:total], memmap.tokens[:])
    _, memmap, fly, _ = _both_modes(tmp_path / "r", "classify")
    rows = rng.permutation(memmap.n_docs)[:40]
    np.testing.assert_array_equal(fly.tokens[rows, :9], memmap.tokens[rows, :9])
    np.testing.assert_array_equal(fly.tokens[5], memmap.tokens[5])


def test_on_the_fly_refuses_a_changed_tokenizer(tmp_path):
    from lm.data.encoded import Encoded
    from lm.tokenizer import Tokenizer

    _, _, fly, _ = _both_modes(tmp_path, "clm", n=100)
    tok_dir = Path(fly.meta["source"]["tokenizer"])
    tok = Tokenizer.load(tok_dir)
    Tokenizer(tok.merges[:-1], list(tok.special_ids)).save(tok_dir)
    with pytest.raises(LmError, match="not the tokenizer.*re-run `lm encode`"):
        Encoded.open(fly.root)


def test_on_the_fly_encoding_changes_when_a_text_does_and_a_stale_one_is_refused(tmp_path):
    """One word of one text changed, same row count and tokenizer: the re-encoded meta.json differs (so DVC
    re-runs the stages that read data/encoded), and the old encoding refuses to read the new corpus."""
    from lm.data.encoded import Encoded

    params, _, fly, _ = _both_modes(tmp_path, "classify", n=100)
    before = (fly.root / "meta.json").read_bytes()
    old7, old8 = fly.tokens[7].tolist(), fly.tokens[8].tolist()
    table = pd.read_csv(tmp_path / "in.csv")
    table.loc[7, "body"] = "changed " + str(table.loc[7, "body"])
    table.to_csv(tmp_path / "in.csv", index=False)
    download.run(params, out_dir=tmp_path / "classify" / "raw")
    with pytest.raises(LmError, match="changed since the on-the-fly encoding was made: re-run `lm encode`"):
        Encoded.open(fly.root)
    p = params.model_copy(update={"encode": params.encode.model_copy(update={"mode": "on_the_fly"})})
    root = tmp_path / "classify"
    encode.run(p, raw_dir=root / "raw", tokenizer_dir=root / "tok", out_dir=root / "again")
    assert (root / "again" / "meta.json").read_bytes() != before
    again = Encoded.open(root / "again")
    assert again.tokens[7].tolist() != old7 and again.tokens[8].tolist() == old8


def test_tokens_per_epoch_draws_a_fresh_window_sample_of_that_size_each_epoch(tmp_path):
    """train.tokens_per_epoch: each epoch is the head of that epoch's permutation, ceil(T / stride) windows,
    no window twice; null is the whole corpus; the plan's steps follow; classify ignores the key."""
    from lm.data.batches import make_items
    from lm.train.stream import TrainStream

    _, enc, _, parts = _both_modes(tmp_path, "clm")
    items = make_items(enc, parts["train"], "clm", enc.max_len)
    whole = TrainStream(items, seed=1, batch_size=4, grad_accum_steps=1)
    T = 40 * items.stride + 3  # 41 windows' worth
    capped = TrainStream(items, seed=1, batch_size=4, grad_accum_steps=1, tokens_per_epoch=T)
    assert len(items) > 100 and capped.items_in_epoch(0) == 41 and capped.steps_in_epoch(0) == 10
    assert whole.steps_in_epoch(0) == len(whole.epoch_items(0)) // 4
    drawn = []
    for epoch in range(3):
        idx = np.concatenate(
            [np.concatenate(capped.step_indices(epoch, s)) for s in range(capped.steps_in_epoch(epoch))]
        )
        full = np.concatenate([np.concatenate(whole.step_indices(epoch, s)) for s in range(10)])
        np.testing.assert_array_equal(idx, full)  # the same seeded order, cut after T tokens
        assert len(set(idx.tolist())) == len(idx) == 40
        drawn.append(set(capped.epoch_items(epoch).starts[idx].tolist()))
    assert drawn[0] != drawn[1] != drawn[2]
    assert sum(capped.schedule(3, None)) == 30
    classify = parse_params(tiny_params(**{"train.tokens_per_epoch": 1000}))
    assert classify.train.tokens_per_epoch is None and "task=clm/mlm only" in classify.inert


def test_stream_shards_hf_streaming_reads_a_dataset_in_streaming_mode(tmp_path, monkeypatch):
    """data.hf_streaming: true streams without data.max_rows (false never streams), with the same rows."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sources, "READ_ROWS", 16)
    folder = tmp_path / "hub_like"
    folder.mkdir()
    frame = _table(100)
    frame.to_json(folder / "train.jsonl", orient="records", lines=True, force_ascii=False)
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **k: calls.append(k["streaming"]) or real(*a, **k)
    )
    cfg = DataConfig(
        source=f"hf:{folder}",
        text_column="body",
        target_column="tox",
        id_column="uid",
        identity_columns=["muslim"],
    )
    streamed, stats = load_corpus(cfg.model_copy(update={"hf_streaming": True}), task="classify", seed=0)
    stored, _ = load_corpus(cfg, task="classify", seed=0)
    capped, _ = load_corpus(
        cfg.model_copy(update={"hf_streaming": False, "max_rows": 30}), task="classify", seed=0
    )
    assert calls == [True, False, False] and stats.details["streaming"] is True
    assert streamed["text"].tolist() == stored["text"].tolist() == frame["body"].tolist()
    np.testing.assert_array_equal(streamed["target"].to_numpy(), frame["tox"].to_numpy())
    assert capped["id"].tolist() == frame["uid"].tolist()[:30]
