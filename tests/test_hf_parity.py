"""Parity with Hugging Face transformers: tiny random GPT-2 and Llama models are built from config objects (no
network), saved with save_pretrained, loaded by lm.model.hf.load_hf_checkpoint, and must give the same
logits in float32 (1e-5) -- plain, with a padding mask, and through lm's KV cache."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm.errors import LmError  # noqa: E402
from lm.model import CausalLM, load_hf_checkpoint  # noqa: E402
from lm.model.hf import interleave_rope_rows, spec_from_hf_config  # noqa: E402
from lm.model.positions import RotaryEmbedding  # noqa: E402

V, MAXLEN = 61, 32
TOL = dict(atol=1e-5, rtol=1e-5)


pytestmark = pytest.mark.usefixtures("hf_quiet")


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace HF's N(0, 0.02) init by O(1) weights (norm gains around 1, non-zero biases), so that logits are
    large and varied and any layout mistake shows far above the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() == 1:
                p.copy_(
                    1.0 + 0.2 * r if ("ln" in name or "norm" in name) and name.endswith("weight") else 0.2 * r
                )
            else:
                p.copy_(r / math.sqrt(p.shape[-1]))
    return model.eval()


def gpt2(tmp_path, *, tie=True, activation="gelu", attn="eager", seed=0):
    cfg = transformers.GPT2Config(
        vocab_size=V,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=MAXLEN,
        activation_function=activation,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = randomize(transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation=attn), seed)
    hf.save_pretrained(tmp_path)
    return hf


def llama(tmp_path, *, kv_heads=2, tie=False, bias=False, theta=500.0, shard=None, attn="eager", seed=0):
    cfg = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,
        max_position_embeddings=MAXLEN,
        rms_norm_eps=1e-6,
        rope_theta=theta,
        tie_word_embeddings=tie,
        attention_bias=bias,
        mlp_bias=bias,
        bos_token_id=0,
        eos_token_id=0,
    )
    hf = randomize(transformers.LlamaForCausalLM._from_config(cfg, attn_implementation=attn), seed)
    hf.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    return hf


def ids(B=2, L=11, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


def assert_parity(hf, lm, x, mask=None):
    with torch.no_grad():
        ref = hf(input_ids=x, attention_mask=mask).logits
        out = lm(x, mask).logits
    assert ref.abs().max() > 1.0  # a meaningful comparison, not two near-zero tensors
    if mask is None:
        torch.testing.assert_close(out, ref, **TOL)
    else:  # padded query positions are don't-care
        keep = mask.bool()
        torch.testing.assert_close(out[keep], ref[keep], **TOL)


def assert_cache_parity(hf, lm, x):
    """lm's incremental decoding (prefix, then one token at a time) == HF's full forward."""
    with torch.no_grad():
        ref = hf(input_ids=x).logits
        out = lm.decode(x[:, :4])
        logits, cache = [out.logits], out.cache
        for t in range(4, x.shape[1]):
            out = lm.decode(x[:, t : t + 1], cache=cache)
            logits.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(logits, 1), ref, **TOL)


def right_padded(B=2, L=11):
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 7:] = 0
    mask[1, 9:] = 0
    return mask


# ---- GPT-2 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_same_logits(tmp_path, tie):
    hf = gpt2(tmp_path, tie=tie)
    lm, cfg = load_hf_checkpoint(tmp_path)
    assert isinstance(lm, CausalLM) and not lm.training
    assert (cfg.attention, cfg.positions, cfg.norm, cfg.mlp, cfg.bias, cfg.tie_embeddings) == (
        "standard",
        "learned",
        "layernorm",
        "gelu",
        True,
        tie,
    )
    assert (lm.vocab_size, lm.max_len) == (V, MAXLEN)
    assert (lm.lm_head.weight is lm.trunk.tok_emb.weight) == tie
    assert sum(p.numel() for p in lm.parameters()) == sum(p.numel() for p in hf.parameters()) + (
        0 if tie else V
    )
    x = ids()
    assert_parity(hf, lm, x)
    assert_parity(hf, lm, x, right_padded())
    assert_cache_parity(hf, lm, x)


def test_gpt2_sdpa_reference_and_bin_weights(tmp_path):
    """HF's default (SDPA) attention gives the same logits; pytorch_model.bin checkpoints load as well."""
    hf = gpt2(tmp_path, attn="sdpa", seed=3)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    lm, _ = load_hf_checkpoint(tmp_path)
    assert_parity(hf, lm, ids(seed=4))


def test_gpt2_tanh_gelu_needs_opt_in(tmp_path):
    hf = gpt2(tmp_path, activation="gelu_new")
    with pytest.raises(LmError, match="allow_approximate_gelu"):
        load_hf_checkpoint(tmp_path)
    lm, _ = load_hf_checkpoint(tmp_path, allow_approximate_gelu=True)
    x = ids()
    with torch.no_grad():
        diff = (lm(x).logits - hf(input_ids=x).logits).abs().max()
    assert 0 < diff < 0.05  # only the tanh-vs-erf approximation separates them


# ---- Llama -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv_heads,tie,bias", [(2, False, False), (1, True, False), (2, False, True)])
def test_llama_same_logits(tmp_path, kv_heads, tie, bias):
    hf = llama(tmp_path, kv_heads=kv_heads, tie=tie, bias=bias)
    lm, cfg = load_hf_checkpoint(tmp_path)
    assert (cfg.attention, cfg.positions, cfg.norm, cfg.mlp, cfg.bias, cfg.tie_embeddings) == (
        "rotary",
        "none",
        "rmsnorm",
        "swiglu",
        bias,
        tie,
    )
    assert cfg.attention_options["rope_theta"] == 500.0 and cfg.norm_eps == 1e-6 and cfg.d_ff == 24
    x = ids()
    assert_parity(hf, lm, x)
    assert_parity(hf, lm, x, right_padded())
    assert_cache_parity(hf, lm, x)


def test_llama_sdpa_reference_and_sharded_checkpoint(tmp_path):
    """HF's SDPA attention as the reference, and a checkpoint split into shards with an index file."""
    hf = llama(tmp_path, shard="4KB", attn="sdpa", seed=5)
    assert (tmp_path / "model.safetensors.index.json").exists() and len(
        list(tmp_path.glob("*.safetensors"))
    ) > 1
    lm, _ = load_hf_checkpoint(tmp_path)
    assert_parity(hf, lm, ids(seed=6))


def test_llama_needs_the_rope_permutation(tmp_path):
    """Without re-ordering q/k rows into interleaved pairs the logits differ: the permutation is what makes
    lm's RoPE equal HF's rotate_half. Checked directly too: rope_lm(P q) == P rope_hf(q)."""
    d, L = 8, 5
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, L, d, generator=g)
    pos = torch.arange(L)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half  # noqa: F401

    inv = 1.0 / (500.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = pos[:, None].float() * inv  # (L, d/2)
    emb = torch.cat([freqs, freqs], -1)
    hf_q, _ = apply_rotary_pos_emb(q, q, emb.cos()[None], emb.sin()[None])
    perm = interleave_rope_rows(torch.arange(d)[:, None], 1)[:, 0]  # new index -> old index
    lm_q = RotaryEmbedding(d, theta=500.0)(q[..., perm], pos)
    torch.testing.assert_close(lm_q, hf_q[..., perm], atol=1e-6, rtol=1e-6)
    # and in a whole model: loading without the permutation breaks parity
    hf = llama(tmp_path)
    lm, _ = load_hf_checkpoint(tmp_path)
    import lm.model.hf as conv

    original = conv.interleave_rope_rows
    try:
        conv.interleave_rope_rows = lambda w, n: w
        wrong, _ = load_hf_checkpoint(tmp_path)
    finally:
        conv.interleave_rope_rows = original
    x = ids()
    with torch.no_grad():
        ref = hf(input_ids=x).logits
        assert (wrong(x).logits - ref).abs().max() > 1e-2
        torch.testing.assert_close(lm(x).logits, ref, **TOL)


# ---- rejected configurations -------------------------------------------------------------------------------


def test_unsupported_checkpoints_raise_lm_errors(tmp_path):
    with pytest.raises(LmError, match="config.json"):
        load_hf_checkpoint(tmp_path)
    base = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=MAXLEN,
    ).to_dict()
    spec_from_hf_config(base)  # fine as it is
    for change, match in (
        ({"model_type": "t5"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, "rope type"),
        ({"head_dim": 4}, "head_dim"),
        ({"num_key_value_heads": 3, "num_attention_heads": 2}, "num_key_value_heads"),
    ):
        with pytest.raises(LmError, match=match):
            spec_from_hf_config({**base, **change})
    gpt = transformers.GPT2Config(
        vocab_size=V, n_embd=16, n_layer=1, n_head=2, activation_function="gelu"
    ).to_dict()
    spec_from_hf_config(gpt)
    for change, match in (
        ({"n_head": 3}, r"n_heads \(3\) must divide"),
        ({"activation_function": "relu"}, "activation_function"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scaling"),
    ):
        with pytest.raises(LmError, match=match):
            spec_from_hf_config({**gpt, **change})
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(LmError, match="save_pretrained"):
        load_hf_checkpoint(tmp_path)  # config but no weights
