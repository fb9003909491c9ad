"""train.ensemble: members trained with seeds seed, seed+1, ... and exported as the mean of their
probabilities, checked against the members scored one by one; plus the export's checksum (damaged weights are
refused)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_params, write_fake_encoded

from lm.config import parse_params
from lm.errors import LmError
from lm.model.ensemble import ClassifierEnsemble, mean_probability_logit
from lm.model.export import load_exported


def test_ensemble_logit_is_the_logit_of_the_mean_probability():
    logits = torch.tensor(
        [[-30.0, 0.0, 2.0, 40.0], [-25.0, 1.0, -3.0, 35.0], [-28.0, -1.0, 0.5, 50.0]], dtype=torch.float64
    )
    p = torch.sigmoid(logits).mean(0)
    expected = torch.log(p) - torch.log1p(-p)
    got = mean_probability_logit(logits)
    assert torch.allclose(torch.sigmoid(got), p, rtol=1e-12, atol=0)
    assert torch.allclose(got[1:3], expected[1:3], rtol=1e-10)
    assert torch.isfinite(got).all()  # no overflow where sigmoid saturates


def _ensemble_params(n: int, **overrides):
    return parse_params(
        tiny_params(
            **{
                "task": "classify",
                "train.ensemble": n,
                "train.batch_size": 8,
                "train.epochs": 1,
                "train.eval_every": 3,
                "train.threads": 1,
                **overrides,
            }
        )
    )


@pytest.fixture
def ensemble_run(in_tmp):
    from stages.train import train_here

    write_fake_encoded(in_tmp, "classify", n_docs=64)
    train_here(_ensemble_params(2))
    return in_tmp


def test_ensemble_scores_are_the_mean_of_its_members(ensemble_run):
    model, config = load_exported(ensemble_run / "models")
    assert isinstance(model, ClassifierEnsemble) and config["ensemble"] == {"members": 2, "seeds": [0, 1]}
    ids = torch.randint(0, 60, (5, 12))
    ids[:, 0] = 62
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    members = [load_exported(ensemble_run / "models/members" / k)[0] for k in ("0", "1")]
    with torch.no_grad():
        probs = [torch.sigmoid(m(ids, mask).logits.double()) for m in members]
        got = torch.sigmoid(model(ids, mask).logits.double())
    assert not torch.allclose(probs[0], probs[1])  # the seeds made different models
    assert torch.allclose(got, (probs[0] + probs[1]) / 2, atol=1e-6)
    assert (ensemble_run / "reports/train/members/1/metrics.json").exists()


def test_ensemble_member_zero_is_the_single_model_of_that_seed(ensemble_run):
    from stages.train import train_here

    train_here(
        _ensemble_params(1), out_dir=ensemble_run / "single", reports_dir=ensemble_run / "single_reports"
    )
    single, _ = load_exported(ensemble_run / "single")
    member, _ = load_exported(ensemble_run / "models/members/0")
    for (name, a), (_, b) in zip(single.state_dict().items(), member.state_dict().items()):
        assert torch.equal(a, b), name


def test_ensemble_resume_skips_finished_members(ensemble_run, monkeypatch):
    from stages import train as stage

    done = (ensemble_run / "models/members/0/model.safetensors").read_bytes()
    calls = []
    real = stage._train_one
    monkeypatch.setattr(
        stage, "_train_one", lambda p, out, rep, resume: (calls.append(p.seed), real(p, out, rep, resume))
    )
    (ensemble_run / "models/members/1/complete.json").unlink()
    stage.train_here(_ensemble_params(2), resume=True)
    assert calls == [1]
    assert (ensemble_run / "models/members/0/model.safetensors").read_bytes() == done


def test_ensemble_is_inert_for_the_language_models():
    """`dvc exp run -S task=clm` from params written for an ensemble classifier trains one model, said
    once."""
    params = parse_params(
        tiny_params(**{"task": "clm", "train.ensemble": 3, "train.select_by": "val_roc_auc"})
    )
    assert params.train.ensemble == 1 and params.train.select_by == "auto"
    assert params.inert == (
        "train.ensemble=3, train.select_by=val_roc_auc: for task=classify only, ignored for task=clm"
    )
    assert parse_params(tiny_params(**{"train.ensemble": 3})).inert is None


def test_export_checksum_refuses_damaged_or_truncated_weights(ensemble_run):
    weights = ensemble_run / "models/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40  # one flipped bit in the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(LmError, match="damaged or partly written") as err:
        load_exported(ensemble_run / "models")
    assert "\n" not in str(err.value)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(LmError, match="damaged or partly written"):
        load_exported(ensemble_run / "models")
    config = json.loads((ensemble_run / "models/config.json").read_text())
    del config["weights_sha256"]  # an older export without a checksum: safetensors' own error, in one line
    (ensemble_run / "models/config.json").write_text(json.dumps(config))
    with pytest.raises(LmError, match="cannot be loaded") as err:
        load_exported(ensemble_run / "models")
    assert "\n" not in str(err.value)


def test_an_ensemble_sums_its_members_costs_and_a_later_single_model_leaves_no_members(ensemble_run):
    """reports/train/metrics.json of an ensemble holds the training time of all members; the next run with
    train.ensemble: 1 replaces models/ whole, so no stale member (DVC-tracked megabytes) is left in it."""
    from stages.train import train_and_publish

    members = [json.loads((ensemble_run / p).read_text()) for p in ("reports/train/members/1/metrics.json",)]
    summary = json.loads((ensemble_run / "reports/train/metrics.json").read_text())
    assert summary["members"] == 2 and summary["n_params"] > members[0]["n_params"] > 0
    assert summary["seconds"] > members[0]["seconds"] and summary["peak_memory_mb"] > 0
    train_and_publish(_ensemble_params(1))
    assert (
        not (ensemble_run / "models/members").exists()
        and not (ensemble_run / "reports/train/members").exists()
    )
    assert "members" not in json.loads((ensemble_run / "reports/train/metrics.json").read_text())
    assert not (ensemble_run / ".lm").exists()
