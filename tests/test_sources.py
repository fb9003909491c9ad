"""load_corpus: every source kind maps to the same canonical frame; bad input stops with one clear line.

References: pandas' own readers on the same files (values must match what pandas/pyarrow read), the
`datasets` library writing the Hugging Face inputs (save_to_disk, data-file directories). No network: the
hf: path is exercised with local directories only, with datasets' cache redirected to tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lm.config import DEFAULT_IDENTITIES, DataConfig
from lm.data.sources import CorpusStats, load_corpus
from lm.data.synthetic import generate_corpus
from lm.errors import LmError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# A small table in a foreign layout: the text is in "body", the score in "tox", one identity column, ids.
ROWS = {
    "uid": ["a1", "a2", "a3", "a4", "a5", "a6"],
    "body": ["first comment", "   ", 'multi\nline, with "quotes"', "NA", "", "last one 🙂"],
    "tox": [0.0, 0.9, 0.25, 1.0, 0.5, 0.6],
    "muslim": [np.nan, 1.0, 0.0, np.nan, 0.0, 0.8],
    "other": ["x", "y", "z", "w", "v", "u"],
}
KEPT = [0, 2, 3, 5]  # rows 1 (whitespace) and 4 (empty) are dropped


def _cfg(source: str | Path, **kw) -> DataConfig:
    base = {
        "text_column": "body",
        "target_column": "tox",
        "id_column": "uid",
        "identity_columns": ["muslim", "black"],
    }
    base.update(kw)
    return DataConfig(source=str(source), **base)


def _expected(rows: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [ROWS["uid"][i] for i in rows],
            "text": [ROWS["body"][i] for i in rows],
            "target": np.array([ROWS["tox"][i] for i in rows], dtype=np.float64),
            "muslim": np.array([ROWS["muslim"][i] for i in rows], dtype=np.float64),
        }
    )


def _check_frame(df: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(df.columns) == list(expected.columns)
    assert df.index.equals(pd.RangeIndex(len(df)))
    assert df["id"].tolist() == expected["id"].tolist()
    assert df["text"].tolist() == expected["text"].tolist()
    for col in expected.columns[2:]:
        assert df[col].dtype == np.float64
        np.testing.assert_array_equal(df[col].to_numpy(), expected[col].to_numpy())


def _write(tmp_path: Path, kind: str, rows: dict | None = None) -> Path:
    frame = pd.DataFrame(rows or ROWS)
    path = tmp_path / f"corpus.{kind}"
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif kind == "json":
        frame.to_json(path, orient="records", force_ascii=False)
    return path


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    """datasets with its cache in tmp_path and the hub switched off: any network attempt fails fast."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return datasets


# --- embedded -----------------------------------------------------------------------------------------------


def test_embedded_source_matches_generator_and_says_synthetic():
    cfg = DataConfig(n_rows=200, identity_columns=["muslim", "asian", "female"])
    df, stats = load_corpus(cfg, task="classify", seed=5)
    ref = generate_corpus(200, seed=5, identities=["muslim", "female"])
    pd.testing.assert_frame_equal(df, ref)
    assert isinstance(stats, CorpusStats)
    manifest = stats.to_manifest()
    assert json.loads(json.dumps(manifest)) == manifest
    assert manifest["synthetic"] is True and manifest["kind"] == "embedded"
    assert manifest["n_read"] == manifest["n_kept"] == 200 and manifest["n_dropped_empty"] == 0
    assert manifest["identity_columns"] == ["muslim", "female"]
    assert manifest["identity_columns_missing"] == ["asian"]
    assert manifest["n_positive"] == int((ref["target"] >= 0.5).sum())
    assert manifest["n_identity_annotated"] == int(ref["muslim"].notna().sum())
    assert manifest["details"]["seed"] == 5


def test_embedded_max_rows_caps_and_seed_matters():
    df, stats = load_corpus(DataConfig(n_rows=300, max_rows=120), task="mlm", seed=1)
    full, _ = load_corpus(DataConfig(n_rows=300), task="mlm", seed=1)
    assert len(df) == 120 and stats.n_read == 120
    pd.testing.assert_frame_equal(df, full.iloc[:120])
    other, _ = load_corpus(DataConfig(n_rows=300), task="mlm", seed=2)
    assert other["text"].tolist() != full["text"].tolist()


# --- local files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl", "json"])
def test_local_table_with_column_mapping(tmp_path, kind):
    path = _write(tmp_path, kind)
    df, stats = load_corpus(_cfg(path), task="classify", seed=0)
    _check_frame(df, _expected(KEPT))
    assert stats.kind == ("jsonl" if kind == "json" else kind)
    assert (stats.n_read, stats.n_kept, stats.n_dropped_empty) == (6, 4, 2)
    assert stats.identity_columns == ["muslim"] and stats.identity_columns_missing == ["black"]
    assert stats.synthetic is False and stats.target_column == "tox"
    assert stats.n_positive == 2 and stats.positive_rate == pytest.approx(0.5)  # 1.0 and 0.6 of 0, .25, 1, .6
    assert stats.n_identity_annotated == 2


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_local_max_rows_counts_rows_read(tmp_path, kind):
    path = _write(tmp_path, kind)
    df, stats = load_corpus(_cfg(path, max_rows=3), task="classify", seed=0)
    _check_frame(df, _expected([0, 2]))
    assert (stats.n_read, stats.n_dropped_empty, stats.max_rows) == (3, 1, 3)


def test_parquet_max_rows_across_row_groups(tmp_path):
    n = 1000
    frame = pd.DataFrame({"text": [f"doc {i}" for i in range(n)], "target": np.linspace(0, 1, n)})
    path = tmp_path / "big.parquet"
    frame.to_parquet(path, index=False, row_group_size=64)
    df, _stats = load_corpus(DataConfig(source=str(path), max_rows=300), task="classify", seed=0)
    assert df["text"].tolist() == frame["text"].tolist()[:300]
    np.testing.assert_array_equal(df["target"].to_numpy(), frame["target"].to_numpy()[:300])
    assert df["id"].tolist() == [str(i) for i in range(300)]


def test_ids_are_source_row_numbers_without_id_column(tmp_path):
    path = _write(tmp_path, "csv")
    df, _ = load_corpus(_cfg(path, id_column=None), task="classify", seed=0)
    assert df["id"].tolist() == [str(i) for i in KEPT]


def test_target_optional_for_mlm_and_clm(tmp_path):
    rows = dict(ROWS, tox=["0.5", "", "", "0.1", "", ""])
    path = _write(tmp_path, "csv", rows)
    df, stats = load_corpus(_cfg(path), task="mlm", seed=0)
    np.testing.assert_array_equal(df["target"].to_numpy(), [0.5, np.nan, 0.1, np.nan])
    df, stats = load_corpus(_cfg(path, target_column="absent"), task="clm", seed=0)
    assert df["target"].isna().all() and stats.target_column is None and stats.n_positive is None
    assert stats.to_manifest()["positive_rate"] is None


def test_txt_paragraphs(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("\n\nOnce upon a time.\nThe end.\n\n\n  \nSecond story.\n\nThird\n", encoding="utf-8")
    df, stats = load_corpus(DataConfig(source=str(path)), task="clm", seed=0)
    assert df["text"].tolist() == ["Once upon a time.\nThe end.", "Second story.", "Third"]
    assert df["id"].tolist() == ["0", "1", "2"]
    assert df["target"].isna().all() and stats.identity_columns == [] and stats.kind == "txt"
    df, stats = load_corpus(DataConfig(source=str(path), max_rows=2), task="mlm", seed=0)
    assert df["text"].tolist() == ["Once upon a time.\nThe end.", "Second story."] and stats.n_read == 2


def test_real_tinystories_sample_as_txt():
    path = SHARED / "tinystories" / "validation.txt"
    if not path.exists():
        pytest.skip("shared data samples absent")
    df, _stats = load_corpus(DataConfig(source=str(path), max_rows=50), task="clm", seed=0)
    ref = [p.strip("\n") for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()][:50]
    assert df["text"].tolist() == ref


def test_real_jigsaw_train_csv_layout():
    path = SHARED / "civil_comments" / "train_head.csv"
    if not path.exists():
        pytest.skip("shared data samples absent")
    ref = pd.read_csv(path)
    assert ref.shape[1] == 45
    cfg = DataConfig(source=str(path), text_column="comment_text", id_column="id")
    df, stats = load_corpus(cfg, task="classify", seed=0)
    assert list(df.columns) == ["id", "text", "target", *DEFAULT_IDENTITIES]
    assert len(df) == len(ref) == stats.n_kept and stats.n_dropped_empty == 0
    assert df["id"].tolist() == [str(i) for i in ref["id"]]
    assert df["text"].tolist() == ref["comment_text"].tolist()
    assert any("\n" in t for t in df["text"])  # quoted multi-line comments survive
    np.testing.assert_allclose(df["target"].to_numpy(), ref["target"].to_numpy(), rtol=0, atol=0)
    for col in DEFAULT_IDENTITIES:
        np.testing.assert_array_equal(df[col].to_numpy(), ref[col].to_numpy(dtype=np.float64))
    assert 0 < df["muslim"].notna().sum() < len(df)  # empty identity cells are NaN, others are numbers
    assert stats.n_positive == int((ref["target"] >= 0.5).sum())
    capped, stats = load_corpus(cfg.model_copy(update={"max_rows": 10}), task="classify", seed=0)
    assert capped["id"].tolist() == [str(i) for i in ref["id"][:10]]


# --- Hugging Face (local directories only) -----------------------------------------------------------------


def test_hf_save_to_disk_dataset_and_dict(tmp_path, hf_offline):
    datasets = hf_offline
    ds = datasets.Dataset.from_pandas(pd.DataFrame(ROWS), preserve_index=False)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds.select(range(2)), "test": ds}).save_to_disk(str(tmp_path / "dict"))

    df, stats = load_corpus(_cfg(f"hf:{tmp_path / 'one'}"), task="classify", seed=0)
    _check_frame(df, _expected(KEPT))
    assert stats.kind == "hf" and stats.details["streaming"] is False

    df, _ = load_corpus(_cfg(f"hf:{tmp_path / 'dict'}", hf_split="test"), task="classify", seed=0)
    _check_frame(df, _expected(KEPT))
    df, stats = load_corpus(
        _cfg(f"hf:{tmp_path / 'dict'}", hf_split="test", max_rows=3), task="classify", seed=0
    )
    _check_frame(df, _expected([0, 2]))
    assert stats.details["streaming"] is True and stats.n_read == 3

    with pytest.raises(LmError, match="no split 'validation'.*train, test"):
        load_corpus(_cfg(f"hf:{tmp_path / 'dict'}", hf_split="validation"), task="classify", seed=0)


def test_hf_data_file_directory_streams_when_max_rows_set(tmp_path, hf_offline, monkeypatch):
    datasets = hf_offline
    folder = tmp_path / "hub_like"
    folder.mkdir()
    pd.DataFrame(ROWS).to_json(folder / "train.jsonl", orient="records", lines=True, force_ascii=False)
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    df, stats = load_corpus(_cfg(f"hf:{folder}"), task="classify", seed=0)
    _check_frame(df, _expected(KEPT))
    assert calls[-1][1] == {"split": "train", "streaming": False}
    assert calls[-1][0] == (str(folder), None)

    df, stats = load_corpus(_cfg(f"hf:{folder}", max_rows=4), task="classify", seed=0)
    _check_frame(df, _expected([0, 2, 3]))
    assert calls[-1][1] == {"split": "train", "streaming": True}
    assert stats.details["streaming"] is True and (stats.n_read, stats.n_dropped_empty) == (4, 1)


def test_hf_config_suffix_is_split_off(tmp_path, hf_offline, monkeypatch):
    datasets = hf_offline
    seen = []

    def fake(path, name=None, split=None, streaming=False):
        seen.append((path, name, split, streaming))
        return datasets.Dataset.from_dict({"text": ["a", "b"], "target": [0.0, 1.0]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    df, stats = load_corpus(
        DataConfig(source="hf:wikitext:wikitext-2-raw-v1", hf_split="validation"), task="classify", seed=0
    )
    assert seen == [("wikitext", "wikitext-2-raw-v1", "validation", False)]
    assert df["text"].tolist() == ["a", "b"] and stats.details["config"] == "wikitext-2-raw-v1"
    load_corpus(DataConfig(source="hf:google/civil_comments"), task="classify", seed=0)
    assert seen[-1] == ("google/civil_comments", None, "train", False)


# --- bad input: one line, naming the problem ----------------------------------------------------------------


def _error(cfg: DataConfig, task: str = "classify") -> str:
    with pytest.raises(LmError) as info:
        load_corpus(cfg, task=task, seed=0)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def test_missing_file_and_unknown_extension(tmp_path):
    msg = _error(_cfg(tmp_path / "nope.csv"))
    assert "not found" in msg and "nope.csv" in msg
    (tmp_path / "data.xlsx").write_bytes(b"x")
    msg = _error(_cfg(tmp_path / "data.xlsx"))
    assert "unknown extension '.xlsx'" in msg and ".parquet" in msg
    msg = _error(_cfg(f"hf:{tmp_path / 'no_such_dir'}"))
    assert "directory not found" in msg
    assert "task must be one of" in _error(_cfg(_write(tmp_path, "csv")), task="regress")


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_missing_text_column_lists_the_columns(tmp_path, kind):
    msg = _error(_cfg(_write(tmp_path, kind), text_column="comment_text"))
    assert "no text column 'comment_text'" in msg
    assert "uid, body, tox, muslim, other" in msg and "data.text_column" in msg


def test_classify_needs_a_target_column(tmp_path):
    path = _write(tmp_path, "csv")
    msg = _error(_cfg(path, target_column="toxicity"))
    assert "no target column 'toxicity'" in msg and "task=classify" in msg and "body" in msg
    txt = tmp_path / "a.txt"
    txt.write_text("hello\n\nworld\n")
    assert "task=classify" in _error(DataConfig(source=str(txt)))
    rows = dict(ROWS, tox=[0.1, 0.2, np.nan, 0.3, 0.4, 0.5])
    msg = _error(_cfg(_write(tmp_path, "csv", rows)))
    assert "empty at row 2 (id a3)" in msg


def test_non_numeric_target_names_the_first_bad_row(tmp_path):
    rows = dict(ROWS, tox=["0.1", "0.2", "0.3", "toxic", "high", "0.5"])
    for kind in ("csv", "jsonl"):
        msg = _error(_cfg(_write(tmp_path, kind, rows)))
        assert "target column 'tox' is not numeric at row 3 (id a4)" in msg and "'toxic'" in msg


def test_target_out_of_range(tmp_path):
    rows = dict(ROWS, tox=[0.0, 0.5, 0.2, 0.1, 0.3, 4.0])
    msg = _error(_cfg(_write(tmp_path, "parquet", rows)))
    assert "outside [0, 1] at row 5 (id a6): 4" in msg
    rows = dict(ROWS, tox=[-0.5, 0.5, 0.2, 0.1, 0.3, 0.4])
    assert "outside [0, 1] at row 0" in _error(_cfg(_write(tmp_path, "csv", rows)), task="mlm")


def test_empty_corpus(tmp_path):
    rows = dict(ROWS, body=["", " ", "\n", "\t", "", "  "])
    msg = _error(_cfg(_write(tmp_path, "csv", rows)))
    assert "corpus is empty" in msg and "'body'" in msg
    txt = tmp_path / "blank.txt"
    txt.write_text("\n\n  \n")
    assert "corpus is empty" in _error(DataConfig(source=str(txt)), task="clm")


def test_identity_columns_must_be_numeric_fractions(tmp_path):
    rows = dict(ROWS, muslim=["", "1", "yes", "", "0", "0.5"])
    msg = _error(_cfg(_write(tmp_path, "csv", rows)))
    assert "identity column 'muslim' is not numeric at row 2 (id a3)" in msg
    rows = dict(ROWS, muslim=[0.0, 1.0, 0.0, 2.0, 0.0, 0.5])
    assert "identity column 'muslim' is outside [0, 1] at row 3" in _error(
        _cfg(_write(tmp_path, "parquet", rows))
    )


def test_bad_ids_and_bad_json(tmp_path):
    rows = dict(ROWS, uid=["a", "b", "a", "c", "d", "e"])
    assert "duplicate value 'a'" in _error(_cfg(_write(tmp_path, "csv", rows)))
    assert "no id column 'key'" in _error(_cfg(_write(tmp_path, "csv"), id_column="key"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "ok", "tox": 0.1, "uid": "x"}\n{"body": oops}\n', encoding="utf-8")
    assert "line 2 is not valid JSON" in _error(_cfg(bad))


def test_a_queued_experiment_reads_relative_paths_from_the_users_repository(tmp_path, monkeypatch):
    """`dvc queue start` runs stages in a copy under .dvc/tmp/exps/ with DVC_ROOT = the user's repository: a
    relative data.source outside the repository (the README's ../shared/data/...) is read from there; a file
    the copy has is its own; a path found nowhere keeps its one-line error, naming the repository root."""
    from lm.config import parse_params

    shared, repo = tmp_path / "shared", tmp_path / "work" / "repo"
    copy = repo / ".dvc/tmp/exps/tmpabc"
    for folder in (shared, copy):
        folder.mkdir(parents=True)
    pd.DataFrame({"text": ["a b", "c d"], "target": [0.0, 1.0]}).to_csv(shared / "set.csv", index=False)
    (copy / "own.csv").write_text("text,target\nx,1\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    params = parse_params(
        {
            "data": {"source": "../../shared/set.csv", "identity_columns": []},
            "pretrain": {"source": "own.csv"},
            "train": {"init_from": "pretrained"},
        }
    )
    assert Path(params.data.source) == repo / "../../shared/set.csv"
    assert params.pretrain.source == "own.csv" and params.train.init_from == "pretrained"
    frame, _ = load_corpus(params.data, task="classify", seed=0)
    assert frame["text"].tolist() == ["a b", "c d"]
    missing = parse_params({"data": {"source": "../../shared/none.csv", "identity_columns": []}})
    with pytest.raises(LmError, match=f"read from the repository root, {repo}"):
        load_corpus(missing.data, task="classify", seed=0)
    monkeypatch.setenv("DVC_ROOT", str(copy))  # a workspace run: nothing moves
    assert parse_params({"data": {"source": "../../shared/set.csv"}}).data.source == "../../shared/set.csv"
