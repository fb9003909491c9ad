"""Defects that made results silently wrong or threw work away (issue 10), each pinned by a test: a changed
local source re-read, `off` read as false, duplicate YAML keys, one-document .txt files, Latin-1 CSVs, missing
identity columns, NA cells in `lm predict`, and a split that leaves val or test empty."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import tiny_params, write_params
from typer.testing import CliRunner

from lm.cli import app
from lm.config import ConfigError, DataConfig, load_params, parse_params
from lm.data.sources import load_corpus
from lm.data.text_encoding import text_encoding

runner = CliRunner()


def _run(args, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    return runner.invoke(app, args)


# ------------------------------------------------------------------------------------------------- params


def test_pos_weight_off_written_unquoted_as_dvc_exp_run_does(tmp_path):
    raw = tiny_params()
    path = write_params(tmp_path / "params.yaml", raw)
    text = path.read_text().replace("pos_weight: auto", "pos_weight: off")  # YAML 1.1 reads this as false
    assert "pos_weight: off" in text
    path.write_text(text)
    assert load_params(path).train.pos_weight == "off"
    with pytest.raises(ConfigError, match="train.pos_weight"):
        parse_params(tiny_params(**{"train.pos_weight": True}))


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("task: classify\ntrain:\n  lr: 0.001\n  batch_size: 8\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "duplicate key 'lr'" in message and "lines 3 and 5" in message and "\n" not in message


# ------------------------------------------------------------------------------------------------- sources


def test_txt_without_blank_lines_is_one_document_per_line(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("first sentence\nsecond one\nthird\n", encoding="utf-8")
    df, stats = load_corpus(DataConfig(source=str(path)), task="clm", seed=0)
    assert df["text"].tolist() == ["first sentence", "second one", "third"]
    assert stats.details["documents"] == "lines"
    df, _ = load_corpus(DataConfig(source=str(path), max_rows=2), task="clm", seed=0)
    assert df["text"].tolist() == ["first sentence", "second one"]
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("a\nb\n\nc\n", encoding="utf-8")
    df, stats = load_corpus(DataConfig(source=str(paragraphs)), task="clm", seed=0)
    assert df["text"].tolist() == ["a\nb", "c"] and stats.details["documents"] == "paragraphs"


def test_latin1_csv_is_read_and_the_encoding_is_stated(tmp_path):
    path = tmp_path / "latin.csv"
    frame = pd.DataFrame({"text": ["café crème", "naïve façade", "plain"], "target": [0.1, 0.9, 0.2]})
    frame.to_csv(path, index=False, encoding="latin-1")
    with pytest.raises(UnicodeDecodeError):
        path.read_text(encoding="utf-8")
    df, stats = load_corpus(DataConfig(source=str(path), identity_columns=[]), task="classify", seed=0)
    assert df["text"].tolist() == frame["text"].tolist()
    assert stats.details["encoding"] == "cp1252"
    df, stats = load_corpus(
        DataConfig(source=str(path), identity_columns=[], encoding="latin-1"), task="classify", seed=0
    )
    assert df["text"].tolist() == frame["text"].tolist() and stats.details["encoding"] == "latin-1"
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,target\nx,0.1\n".encode("utf-8"))
    assert text_encoding(bom, "auto") == "utf-8-sig"
    df, _ = load_corpus(DataConfig(source=str(bom), identity_columns=[]), task="classify", seed=0)
    assert df["text"].tolist() == ["x"]


def test_unknown_encoding_is_one_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,target\na,0.1\n")
    from lm.errors import LmError

    with pytest.raises(LmError, match="data.encoding 'klingon' is not a known text encoding"):
        load_corpus(
            DataConfig(source=str(path), encoding="klingon", identity_columns=[]), task="classify", seed=0
        )


def test_download_warns_about_identity_columns_the_data_lacks(tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["a", "b"], "target": [0.1, 0.8], "male": [0.0, 1.0]}).to_csv(source, index=False)
    write_params(
        tmp_path / "params.yaml",
        tiny_params(**{"data.source": str(source), "data.identity_columns": ["male", "female", "jewish"]}),
    )
    result = _run(["download"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "['female', 'jewish']" in result.output


def test_identity_columns_auto_takes_those_the_source_has_and_names_no_missing_ones(tmp_path, monkeypatch):
    """The default (auto) asks no identity annotations of a data set that has none: no warning, no bias
    columns; a source with some of the Jigsaw identity columns gets exactly those."""
    plain, jigsaw = tmp_path / "plain.csv", tmp_path / "jigsaw.csv"
    pd.DataFrame({"text": ["a", "b"], "target": [0.1, 0.8]}).to_csv(plain, index=False)
    pd.DataFrame({"text": ["a", "b"], "target": [0.1, 0.8], "muslim": [0.0, 1.0], "extra": [1, 2]}).to_csv(
        jigsaw, index=False
    )
    for source, expected in ((plain, []), (jigsaw, ["muslim"])):
        _, stats = load_corpus(DataConfig(source=str(source)), task="classify", seed=0)
        assert stats.identity_columns == expected and stats.identity_columns_missing == []
    write_params(tmp_path / "params.yaml", tiny_params(**{"data.source": str(plain)}))
    result = _run(["download"], tmp_path, monkeypatch)
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    assert list(pd.read_parquet(tmp_path / "data/raw/corpus.parquet").columns) == ["id", "text", "target"]


# ------------------------------------------------------------------------------------------------- download


def test_download_rereads_a_changed_source_and_skips_an_unchanged_one(tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": [f"row {i}" for i in range(30)], "target": [0.1] * 30}).to_csv(source, index=False)
    write_params(
        tmp_path / "params.yaml", tiny_params(**{"data.source": str(source), "data.identity_columns": []})
    )
    assert _run(["download"], tmp_path, monkeypatch).exit_code == 0
    corpus = tmp_path / "data/raw/corpus.parquet"
    before = corpus.stat().st_mtime_ns
    again = _run(["download"], tmp_path, monkeypatch)
    assert again.exit_code == 0 and "up to date" in again.output
    assert (
        corpus.stat().st_mtime_ns == before
    )  # untouched: DVC sees the same output, later stages stay cached
    pd.DataFrame({"text": [f"row {i}" for i in range(12)], "target": [0.1] * 12}).to_csv(source, index=False)
    changed = _run(["download"], tmp_path, monkeypatch)
    assert changed.exit_code == 0 and "12 rows" in changed.output
    assert len(pd.read_parquet(corpus)) == 12
    manifest = json.loads((tmp_path / "data/raw/manifest.json").read_text())
    assert (
        manifest["fingerprint"]["source"]["kind"] == "file"
        and len(manifest["fingerprint"]["source"]["sha256"]) == 64
    )
    write_params(
        tmp_path / "params.yaml",
        tiny_params(**{"data.source": str(source), "data.identity_columns": [], "data.max_rows": 5}),
    )
    assert "5 rows" in _run(["download"], tmp_path, monkeypatch).output  # a params change re-reads too


def test_download_records_the_hub_revision(monkeypatch):
    from lm.data import fingerprint

    monkeypatch.setattr(fingerprint, "hub_revision", lambda dataset, revision: f"sha-of-{dataset}-{revision}")
    fp = fingerprint.source_fingerprint(
        DataConfig(source="hf:owner/name", hf_revision="v1"), task="classify", seed=0
    )
    assert fp["source"] == {"kind": "hf", "dataset": "owner/name", "revision": "sha-of-owner/name-v1"}


# ------------------------------------------------------------------------------------------------- predict


def test_predict_reads_empty_and_na_cells_as_text_rows(tmp_path):
    from lm.infer.predict import read_texts

    csv = tmp_path / "in.csv"
    csv.write_text("text,other\nhello,1\n,2\nNA,3\nnull,4\n", encoding="utf-8")
    assert read_texts(csv) == ["hello", "", "NA", "null"]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": null}\n{"other": 1}\n', encoding="utf-8")
    assert read_texts(jsonl) == ["a", "", ""]
    parquet = tmp_path / "in.parquet"
    pd.DataFrame({"text": ["x", None]}).to_parquet(parquet)
    assert read_texts(parquet) == ["x", ""]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    assert read_texts(latin) == ["café"]


def test_split_that_leaves_val_or_test_empty_stops_with_one_line(tmp_path, monkeypatch):
    source = tmp_path / "one.txt"
    source.write_text("only one document here\n", encoding="utf-8")
    write_params(tmp_path / "params.yaml", tiny_params(**{"task": "clm", "data.source": str(source)}))
    for stage in ("download", "tokenize", "encode"):
        assert _run([stage], tmp_path, monkeypatch).exit_code == 0
    result = _run(["split"], tmp_path, monkeypatch)
    assert result.exit_code != 0
    assert "leave val and test empty" in result.output and "split.val_fraction" in result.output
    assert not (tmp_path / "data/split").exists()


def test_stage_output_directories_get_the_umask_mode(tmp_path):
    import os
    import stat

    from lm.io import atomic_dir

    plain = tmp_path / "plain"
    plain.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert os.access(tmp_path / "out" / "x", os.R_OK)
