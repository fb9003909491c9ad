"""The CUDA path, on a machine that has one (every test here is `gpu`-marked: skipped without CUDA; the
device, launcher and AMP logic they rest on is tested on CPU in test_devices.py and test_train.py):
AMP bf16 and fp16 training steps, softmax attention against F.scaled_dot_product_attention on CUDA, DDP over
NCCL with one process, torch.compile, and the GPU benchmark's MFU line."""

from __future__ import annotations

import copy
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, subprocess_env, tiny_params, write_fake_encoded

from lm.config import parse_params
from lm.model import build_model
from lm.model.attention import Pass, attention_class, resolve_attention_options
from lm.train.checkpoint import CHECKPOINT, load_checkpoint
from lm.train.loop import train

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda", 0)


def _train(root: Path, out: str, **overrides):
    params = parse_params(
        tiny_params(
            **{
                "task": "clm",
                "train.batch_size": 8,
                "train.epochs": 1,
                "train.eval_every": 3,
                "train.warmup_steps": 1,
                "train.device": "cuda",
                "model.dropout": 0.0,
                "model.attention_dropout": 0.0,
                **overrides,
            }
        )
    )
    return train(
        params,
        encoded_dir=root / "data/encoded",
        split_dir=root / "data/split",
        tokenizer_dir=root / "data/tokenizer",
        out_dir=root / out,
        reports_dir=root / "reports" / out,
    )


def test_gpu_amp_bf16_and_fp16_train_close_to_fp32_with_a_scaler_for_fp16_only(tmp_path):
    write_fake_encoded(tmp_path, "clm", n_docs=72)
    runs = {amp: _train(tmp_path, amp, **{"train.amp": amp}) for amp in ("none", "bf16", "fp16")}
    first = {amp: r.step_log[0]["train_loss"] for amp, r in runs.items()}
    for amp in ("bf16", "fp16"):
        log = runs[amp].step_log
        assert len(log) == len(runs["none"].step_log) >= 4 and all(
            math.isfinite(r["train_loss"]) for r in log
        )
        assert abs(first[amp] - first["none"]) < 0.05  # the same model and batch, half-precision rounding
        assert log[-1]["train_loss"] < log[0]["train_loss"]  # it learns
    assert load_checkpoint(tmp_path / "bf16" / CHECKPOINT)["scaler"] == {}
    scaler = load_checkpoint(tmp_path / "fp16" / CHECKPOINT)["scaler"]
    assert scaler["scale"] > 0 and "growth_factor" in scaler


def _sdpa_reference(attn, x: torch.Tensor, key_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """The layer's own projections and RoPE around F.scaled_dot_product_attention (whatever path lm takes)."""
    B, L, E = x.shape
    q, k, v = (
        t.view(B, L, attn.n_heads, attn.head_dim).transpose(1, 2) for t in attn.qkv(x).split(E, dim=-1)
    )
    if attn.rope is not None:
        positions = torch.arange(L, device=x.device)
        q, k = attn.rope(q, positions), attn.rope(k, positions)
    allowed = key_mask[:, None, None, :]  # (B, 1, 1, L)
    if causal:
        allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, L, d)
    return attn.proj(out.transpose(1, 2).reshape(B, L, E))


@pytest.mark.parametrize("kind", ["standard", "rotary"])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_softmax_attention_matches_scaled_dot_product_attention_on_cuda(kind, causal):
    torch.manual_seed(0)
    attn = (
        attention_class(kind)(d_model=64, n_heads=4, max_len=256, options=resolve_attention_options(kind, {}))
        .to(CUDA)
        .eval()
    )
    x = torch.randn(3, 200, 64, device=CUDA, requires_grad=True)
    key_mask = torch.arange(200, device=CUDA)[None] < torch.tensor([200, 150, 37], device=CUDA)[:, None]
    out = attn(x, Pass(key_mask=key_mask, causal=causal)).out
    explicit = attn(x, Pass(key_mask=key_mask, causal=causal, return_attention=True))  # the weights' path
    ref = _sdpa_reference(attn, x, key_mask, causal)
    real = key_mask[..., None]  # padded query rows are never read
    assert torch.allclose(out * real, ref * real, atol=1e-4), (out - ref).mul(real).abs().max()
    assert torch.allclose(explicit.out * real, ref * real, atol=1e-4)
    (grad,) = torch.autograd.grad((out * real).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * real).sum(), x)
    assert torch.allclose(grad, grad_ref, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as training runs it: bf16 projections
        half, half_ref = (
            attn(x, Pass(key_mask=key_mask, causal=causal)).out,
            _sdpa_reference(attn, x, key_mask, causal),
        )
    assert torch.allclose(half.float() * real, half_ref.float() * real, atol=3e-2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpu_nccl_ddp_of_one_process_steps_like_the_plain_model():
    """An NCCL process group of one rank: lm's all-reduce works on the GPU and DDP's gradient sync leaves the
    update of the plain model unchanged."""
    import torch.distributed as dist

    from lm.train.distributed import Dist

    cfg = parse_params(tiny_params(**{"model.dropout": 0.0})).model
    plain = build_model(cfg, task="clm", vocab_size=64, max_len=32, pad_id=61, seed=0).to(CUDA)
    model = copy.deepcopy(plain)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, device_id=CUDA
    )
    try:
        assert dist.get_backend() == "nccl"
        t = torch.tensor([1.5, 2.0], dtype=torch.float64, device=CUDA)
        dist.all_reduce(t)
        assert t.tolist() == [1.5, 2.0]
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
        ids = torch.randint(0, 60, (4, 32), device=CUDA)
        opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (plain, model)]
        for _ in range(3):
            for run, opt in zip((plain, ddp), opts):
                run(ids[:, :-1], labels=ids[:, 1:]).loss.backward()
                opt.step()
                opt.zero_grad()
        for (name, a), b in zip(plain.state_dict().items(), model.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), name
        assert Dist(rank=0, world_size=1, local_rank=0, device=CUDA).all_reduce_sum([3.0]) == [3.0]
    finally:
        dist.destroy_process_group()


def test_gpu_compiled_training_matches_eager(tmp_path):
    write_fake_encoded(tmp_path, "clm", n_docs=72)
    runs = {
        c: _train(tmp_path, f"compile_{c}", **{"train.compile": c, "train.max_steps": 4})
        for c in (False, True)
    }
    eager = load_checkpoint(tmp_path / "compile_False" / CHECKPOINT)["model"]
    compiled = load_checkpoint(tmp_path / "compile_True" / CHECKPOINT)["model"]
    assert compiled.keys() == eager.keys() and not any("_orig_mod" in k for k in compiled)
    for name in eager:
        assert torch.allclose(eager[name], compiled[name], atol=1e-4, rtol=1e-4), name
    losses = [[r["train_loss"] for r in runs[c].step_log] for c in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_gpu_train_step_benchmark_reports_mfu():
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "train_step.py"),
            "--device",
            "cuda",
            "--batch",
            "2",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--no-save",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    (row,) = figures["results"]
    assert figures["benchmark"] == "train_step_cuda" and figures["amp"] == "bf16" and figures["seq"] == 1024
    assert 124e6 < row["params"]["lm"] < 126e6  # GPT-2 small sized (124M + the 1,025 x 768 position table)
    assert row["tokens_per_s"] == row["lm_tokens_per_s"] > 0
    if figures["peak_tflops"] is not None:  # a GPU in the table
        assert 0 < row["mfu"] < 1 and 0 < row["hf_mfu"] < 1
