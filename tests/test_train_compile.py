"""train.compile: torch.compile (inductor, CPU) trains like eager mode, and the checkpoint and export hold
the plain module's names (no `_orig_mod.`). Slow: the first compile of even a tiny model takes ~40 s here."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_params, write_fake_encoded

from lm.config import parse_params
from lm.train.checkpoint import CHECKPOINT, load_checkpoint
from lm.train.loop import train

pytestmark = pytest.mark.slow


def test_compiled_training_matches_eager_and_checkpoints_plain_names(tmp_path):
    from safetensors.torch import load_file

    write_fake_encoded(tmp_path, "clm", n_docs=72)
    threads = torch.get_num_threads()
    results = {}
    try:
        for compiled in (False, True):
            params = parse_params(
                tiny_params(
                    **{
                        "task": "clm",
                        "train.batch_size": 8,
                        "train.max_steps": 3,
                        "train.eval_every": 3,
                        "train.warmup_steps": 1,
                        "train.threads": 1,
                        "train.compile": compiled,
                        "model.dropout": 0.0,
                    }
                )
            )
            out = tmp_path / f"models_{compiled}"
            results[compiled] = train(
                params,
                encoded_dir=tmp_path / "data/encoded",
                split_dir=tmp_path / "data/split",
                tokenizer_dir=tmp_path / "data/tokenizer",
                out_dir=out,
                reports_dir=tmp_path / f"reports_{compiled}",
            )
    finally:
        torch.set_num_threads(threads)
    eager = load_checkpoint(tmp_path / "models_False" / CHECKPOINT)["model"]
    compiled = load_checkpoint(tmp_path / "models_True" / CHECKPOINT)["model"]
    assert compiled.keys() == eager.keys()
    assert not any("_orig_mod" in k or k.startswith("module.") for k in compiled)
    assert not any("_orig_mod" in k for k in load_file(str(tmp_path / "models_True" / "model.safetensors")))
    for name in eager:
        assert torch.allclose(eager[name], compiled[name], atol=1e-5, rtol=0), name
    losses = [[r["train_loss"] for r in results[c].step_log] for c in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0][0] != losses[0][-1]
