"""params.yaml and docs/configuration.md are written from the config classes (lm/config_docs.py): both are
current, every key is described once (in its Field), values render as YAML that reads back as themselves, and
the train section is grouped into parts a reader can skim while its keys stay flat."""

from __future__ import annotations

import re

import pytest
import yaml

from lm import config_docs
from lm.config import Params, TrainConfig


def test_params_yaml_and_the_configuration_page_are_current():
    stale = [
        str(path.relative_to(config_docs.REPO))
        for path, text in config_docs.outputs().items()
        if path.read_text() != text
    ]
    assert not stale, f"{stale} out of date: run python -m lm.config_docs --write"
    assert config_docs.main(["--check"]) == 0


def test_every_key_has_a_description():
    missing = [
        f"{section}.{key}"
        for section, cls in config_docs.sections()
        for key, field in cls.model_fields.items()
        if not field.description
    ]
    sections = dict(config_docs.sections())
    missing += [k for k, f in Params.model_fields.items() if k not in sections and not f.description]
    assert not missing, f"give these a Field description in lm/config.py: {missing}"


def test_params_yaml_comments_are_the_field_descriptions():
    text = config_docs.PARAMS.read_text()
    for section, cls in config_docs.sections():
        for key, field in cls.model_fields.items():
            if field.description:
                assert re.search(rf"^  {key}: .*# .*{re.escape(field.description)}$", text, re.M), (
                    f"{section}.{key}"
                )


@pytest.mark.parametrize(
    "value, text",
    [
        (None, "null"),
        (True, "true"),
        (8, "8"),
        (8.0, "8.0"),
        (1e-05, "0.00001"),
        (5e-05, "0.00005"),
        (0.0002, "0.0002"),
        ("embedded", "embedded"),
        ("127.0.0.1", "127.0.0.1"),
        ("off", '"off"'),
        ("null", '"null"'),
        ("12", '"12"'),
        ("I think that", '"I think that"'),
        (["<|pad|>", "x"], '["<|pad|>", x]'),
    ],
)
def test_a_value_renders_as_yaml_that_reads_back_as_itself(value, text):
    assert config_docs.render_value(value) == text
    loaded = yaml.safe_load(f"k: {text}")["k"]
    assert loaded == value and type(loaded) is type(value)


def test_train_is_grouped_in_parts_whose_keys_stay_flat():
    parts = config_docs.parts(TrainConfig)
    assert len(parts) >= 4
    keys = [key for part in parts for key in part.model_fields]
    assert keys == list(TrainConfig.model_fields), "the parts list the train keys in their order, once each"
    raw = yaml.safe_load(config_docs.PARAMS.read_text())["train"]
    assert {"lr", "nproc", "ensemble", "mask_prob"} <= set(raw)  # `-S train.lr=...` as before
    text = config_docs.PARAMS.read_text()
    headers = re.findall(r"^  # -- (.*)$", text, re.M)
    assert len(headers) == len(parts)
    doc = config_docs.DOC.read_text()
    assert len(re.findall(r"^### train: ", doc, re.M)) == len(parts)
