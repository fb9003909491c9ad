"""Attention kinds: references (SDPA, brute-force formulas, kernel expectations) and invariants
(causality, prefix consistency, padding, linear == quadratic, cache == recompute, fixed random state)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lm.attention_kinds import KINDS as KIND_SPECS
from lm.attention_kinds import resolve_attention_options
from lm.config import ATTENTION_KINDS, ModelConfig
from lm.errors import LmError
from lm.model import build_model
from lm.model.attention import Pass, attention_class
from lm.model.attention.base import (
    LinearAttention,
    linear_bidirectional,
    linear_causal_chunked,
    linear_quadratic,
)
from lm.model.attention.registry import REGISTRY
from lm.model.attention.slay import SlayLaplaceAttention, laguerre_nodes
from lm.model.positions import RotaryEmbedding

KINDS = list(ATTENTION_KINDS)
LINEAR_KINDS = [k for k in KINDS if issubclass(attention_class(k), LinearAttention)]
POSITIVE_KINDS = [
    "standard",
    "rotary",
    "linear",
    "performer",
    "cosformer",
    "yat",
    "yat-spherical",
    "slay",
    "slay-laplace",
    "slay-anchor",
]  # weights >= 0 (signed: rff, slay-tensor/rm/nystrom)
RANDOM_KINDS = [
    "performer",
    "rff",
    "slay",
    "slay-tensor",
    "slay-laplace",
    "slay-rm",
    "slay-nystrom",
    "slay-anchor",
]
E, H, MAXLEN = 16, 2, 32

pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, seed: int = 0, d_model: int = E, n_heads: int = H, **options):
    torch.manual_seed(1234)  # parameters; buffers come from the generator
    cls = attention_class(kind)
    return cls(
        d_model=d_model,
        n_heads=n_heads,
        bias=True,
        attention_dropout=0.0,
        max_len=MAXLEN,
        options=resolve_attention_options(kind, options),
        generator=torch.Generator().manual_seed(seed),
    ).eval()


def rand_x(B=2, L=10, seed=0, dtype=torch.float32):
    return torch.randn(B, L, E, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def split_heads(attn, x):
    B, L, _ = x.shape
    q, k, v = attn.qkv(x).split(attn.d_model, dim=-1)
    return [t.view(B, L, attn.n_heads, attn.head_dim).transpose(1, 2) for t in (q, k, v)]


def merge(attn, o):
    B, _, L, _ = o.shape
    return attn.proj(o.transpose(1, 2).reshape(B, L, attn.d_model))


def linear_causal_cumsum(
    phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, S0: torch.Tensor, z0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal prefix sums by a vectorised cumsum over a (B,H,L,m,d) tensor: memory-hungry, the reference for
    lm's chunked prefix sums."""
    S_t = S0[:, :, None] + torch.cumsum(phi_k[..., :, None] * v[..., None, :], dim=2)  # (B, H, L, m, d)
    z_t = z0[:, :, None] + torch.cumsum(phi_k, dim=2)  # (B, H, L, m)
    num = (phi_q[..., None] * S_t).sum(-2)
    den = (phi_q * z_t).sum(-1)
    return num, den, S_t[:, :, -1], z_t[:, :, -1]


# ---- registry and options ---------------------------------------------------------------------------------


def test_registry_has_exactly_the_config_kinds():
    """Each class declares the kind and options model that the torch-free list (the config's) names."""
    assert tuple(KIND_SPECS) == ATTENTION_KINDS == tuple(REGISTRY)
    for kind, options in KIND_SPECS.items():
        cls = attention_class(kind)
        assert cls.kind == kind and cls.Options is options


def test_options_are_validated_per_kind():
    resolve_attention_options("performer", {"num_features": 32, "kernel": "softmax", "use_rope": True})
    with pytest.raises(LmError, match=r"model\.attention_options\.num_featurez"):
        resolve_attention_options("performer", {"num_featurez": 3})
    with pytest.raises(LmError, match=r"model\.attention_options\.poly_dim"):
        resolve_attention_options("slay", {"poly_dim": 8})  # only the tensor-fusion kinds have P
    with pytest.raises(LmError, match=r"model\.attention_options\.num_features: must be >= 1"):
        resolve_attention_options("rff", {"num_features": 0})
    with pytest.raises(LmError, match=r"model\.attention_options\.kernel"):
        resolve_attention_options("performer", {"kernel": "tanh"})
    with pytest.raises(LmError, match=r"model\.attention_options\.use_rope"):
        resolve_attention_options("rotary", {"use_rope": False})
    with pytest.raises(LmError, match=r"model\.attention_options\.use_rope: must be true or false"):
        resolve_attention_options("linear", {"use_rope": "yes"})


def test_options_keep_their_messages_and_defaults():
    with pytest.raises(
        LmError, match=r"^model\.attention_options\.eps: must be > 0\.0 for attention 'linear' \(got 0\)$"
    ):
        resolve_attention_options("linear", {"eps": 0})
    with pytest.raises(
        LmError, match=r"^model\.attention_options\.kernel: must be one of relu, softmax for attention"
    ):
        resolve_attention_options("performer", {"kernel": "tanh"})
    with pytest.raises(LmError, match=r"num_features: must be an integer .*\(got 3\.0\)"):
        resolve_attention_options("slay", {"num_features": 3.0})
    with pytest.raises(LmError, match=r"nystrom_reg: must be >= 0\.0"):
        resolve_attention_options("slay-nystrom", {"nystrom_reg": -1})
    with pytest.raises(
        LmError, match=r"^model\.attention_options\.bad: unknown option .*\(allowed: chunk_size, eps,"
    ):
        resolve_attention_options("linear", {"bad": 1, "chunk_size": 0})  # the first bad key as written
    with pytest.raises(LmError, match=r"^model\.attention_options\.chunk_size: must be >= 1"):
        resolve_attention_options("linear", {"chunk_size": 0, "bad": 1})
    with pytest.raises(LmError, match=r"^model\.attention: unknown kind 'nope'"):
        attention_class("nope")
    assert resolve_attention_options("slay", {}).num_features == 32  # slay's own default over SlayOptions' 8
    assert resolve_attention_options("slay-anchor", {}).num_features == 8
    assert (
        resolve_attention_options("rotary", {}).use_rope
        and not resolve_attention_options("standard", {}).use_rope
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_names_its_class_and_the_class_its_kind(kind):
    layer = make(kind)
    assert type(layer) is attention_class(kind) and layer.kind == kind
    assert isinstance(layer.opts, KIND_SPECS[kind])


@pytest.mark.parametrize("kind", ["standard", "performer", "slay-nystrom"])
def test_options_are_validated_once_per_model_build(kind, monkeypatch):
    cfg = ModelConfig(d_model=E, n_heads=H, d_ff=32, n_layers=3, attention=kind)
    options_model = KIND_SPECS[kind]
    validate = options_model.model_validate
    calls = []

    def counted(obj, *args, **kwargs):
        calls.append(obj)
        return validate(obj, *args, **kwargs)

    monkeypatch.setattr(options_model, "model_validate", counted)
    model = build_model(cfg, task="clm", vocab_size=40, max_len=MAXLEN, pad_id=1)
    assert len(calls) == 1  # not once per layer (it was 2 + 2 * n_layers)
    assert len({id(block.attn.opts) for block in model.trunk.blocks}) == 1


def test_bias_switch_covers_qkv_and_output_projection():
    cls, options = attention_class("standard"), resolve_attention_options("standard", {})
    on = cls(d_model=E, n_heads=H, bias=True, max_len=MAXLEN, options=options)
    off = cls(d_model=E, n_heads=H, bias=False, max_len=MAXLEN, options=options)
    assert on.qkv.bias is not None and on.proj.bias is not None
    assert off.qkv.bias is None and off.proj.bias is None
    assert sum(p.numel() for p in on.parameters()) - sum(p.numel() for p in off.parameters()) == 4 * E


# ---- standard == SDPA --------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_standard_equals_sdpa(causal, padded):
    attn = make("standard")
    x = rand_x(L=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    if padded:
        mask[1, 6:] = False
    q, k, v = split_heads(attn, x)
    allowed = mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(9, 9, dtype=torch.bool).tril()
    ref = merge(attn, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    out = attn(x, Pass(key_mask=mask if padded else None, causal=causal)).out
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_rotary_equals_sdpa_on_rotated_qk():
    attn = make("rotary")
    x = rand_x(L=9)
    q, k, v = split_heads(attn, x)
    rope = RotaryEmbedding(attn.head_dim)
    pos = torch.arange(9)
    ref = merge(attn, F.scaled_dot_product_attention(rope(q, pos), rope(k, pos), v, is_causal=True))
    torch.testing.assert_close(attn(x, Pass(causal=True)).out, ref, atol=1e-5, rtol=1e-5)


# ---- RoPE ------------------------------------------------------------------------------------------------


def test_rope_properties():
    d = 8
    rope = RotaryEmbedding(d)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, d, generator=g)
    pos = torch.arange(6)
    rx = rope(x, pos)
    torch.testing.assert_close(rx.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)  # norm preserving
    torch.testing.assert_close(rx[:, 0], x[:, 0])  # R_0 = I
    q, k = torch.randn(d, generator=g), torch.randn(d, generator=g)

    def score(m, n):
        return (rope(q[None], torch.tensor([m])) * rope(k[None], torch.tensor([n]))).sum()

    for shift in (1, 5, 17):  # depends on n - m only
        torch.testing.assert_close(score(2, 7), score(2 + shift, 7 + shift), atol=1e-5, rtol=1e-5)
    e = torch.zeros(d)
    e[0], e[1] = 1.0, 0.5  # non-zero only in the first interleaved pair
    re = rope(e[None], torch.tensor([3]))[0]
    assert torch.all(re[2:] == 0) and not torch.allclose(re[:2], e[:2])
    # reference: llama's complex multiplication of interleaved pairs
    freqs = 10000.0 ** (-torch.arange(0, d, 2).double() / d)
    cis = torch.polar(torch.ones(6, d // 2, dtype=torch.float64), pos.double()[:, None] * freqs)
    ref = torch.view_as_real(torch.view_as_complex(x.double().reshape(3, 6, d // 2, 2)) * cis).flatten(-2)
    torch.testing.assert_close(rx.double(), ref, atol=1e-5, rtol=1e-5)


# ---- properties for every kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_finite_values_and_grads(kind):
    attn = make(kind).train()
    for causal in (False, True):
        x = rand_x(L=12).requires_grad_(True)
        mask = torch.ones(2, 12, dtype=torch.bool)
        mask[0, 9:] = False
        out = attn(x, Pass(key_mask=mask, causal=causal)).out
        assert out.shape == (2, 12, E) and torch.isfinite(out).all()
        out.square().mean().backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
        attn.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(rand_x(L=12), Pass(causal=True)).out
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("kind", KINDS)
def test_causality_and_prefix_consistency(kind):
    attn = make(kind)
    x = rand_x(L=12)
    full = attn(x, Pass(causal=True)).out
    t = 6
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
    torch.testing.assert_close(
        attn(x2, Pass(causal=True)).out[:, : t + 1], full[:, : t + 1], atol=1e-5, rtol=1e-4
    )
    for n in (1, 5, 11):  # out(x)[:, :n] == out(x[:, :n])  (cosformer too: causal M is fixed)
        torch.testing.assert_close(attn(x[:, :n], Pass(causal=True)).out, full[:, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_last_position_same_in_causal_and_bidirectional(kind):
    opts = {"max_len": MAXLEN} if kind == "cosformer" else {}  # both modes must use the same M
    attn = make(kind, **opts)
    x = rand_x(L=10)
    torch.testing.assert_close(
        attn(x, Pass(causal=True)).out[:, -1], attn(x, Pass()).out[:, -1], atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", KINDS)
def test_padding_invariance(kind):
    attn = make(kind)
    n, L = 7, 12
    x = rand_x(L=L)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[:, n:] = False
    x2 = x.clone()
    x2[:, n:] = torch.randn_like(x2[:, n:]) * 5
    for causal in (False, True):
        a = attn(x, Pass(key_mask=mask, causal=causal)).out[:, :n]
        b = attn(x2, Pass(key_mask=mask, causal=causal)).out[:, :n]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the amount of padding does not matter either (cosformer needs a fixed M for that)
    fixed = make(kind, max_len=MAXLEN) if kind == "cosformer" else attn
    for causal in (False, True):
        short = fixed(x[:, :n], Pass(causal=causal)).out
        long = fixed(x, Pass(key_mask=mask, causal=causal)).out[:, :n]
        torch.testing.assert_close(long, short, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kind", [k for k in KINDS if k not in ("cosformer", "rotary")]
)  # position-blind kinds
def test_bidirectional_permutation_equivariance(kind):
    attn = make(kind)
    x = rand_x(L=9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        attn(x[:, perm], Pass()).out, attn(x, Pass()).out[:, perm], atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", KINDS)
def test_returned_weights_are_the_weights_used(kind):
    """proj(weights @ v) reproduces the output; disallowed keys get 0; rows of positive kinds sum to 1."""
    opts = {"eps": 1e-9} if kind in LINEAR_KINDS else {}
    attn = make(kind, **opts)
    x = rand_x(L=10)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    _, _, v = split_heads(attn, x)
    for causal in (False, True):
        res = attn(x, Pass(key_mask=mask, causal=causal, return_attention=True))
        w = res.weights
        assert w.shape == (2, H, 10, 10)
        torch.testing.assert_close(merge(attn, w @ v), res.out, atol=1e-5, rtol=1e-4)
        allowed = mask[:, None, None, :] & (torch.ones(10, 10).tril().bool() if causal else True)
        assert torch.all(w.masked_select(~allowed.expand_as(w)) == 0)
        if kind in POSITIVE_KINDS:
            assert torch.all(w >= 0)
            sums = w.sum(-1)
            if kind == "cosformer":  # ReLU features can have disjoint support: such a row is 0/eps = 0
                sums = sums[sums > 1e-3]
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_state_equals_full_causal_pass(kind):
    attn = make(kind, chunk_size=3) if kind in LINEAR_KINDS else make(kind)
    x = rand_x(L=11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 4] = False  # a masked key in the middle of the cached prefix
    full = attn(x, Pass(key_mask=mask, causal=True)).out
    out, state = attn.decode(x[:, :5], Pass(key_mask=mask[:, :5], causal=True), None)
    outs = [out]
    for t in range(5, 11):
        out, state = attn.decode(
            x[:, t : t + 1], Pass(key_mask=mask[:, t : t + 1], causal=True, offset=t), state
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_random_state_is_fixed_saved_and_seeded(kind):
    attn = make(kind, seed=0)
    names = [n for n, _ in attn.named_buffers() if n in attn.state_dict()]
    assert names, "random features must be persistent buffers"
    x = rand_x(L=8)
    attn.train()
    a, b = attn(x, Pass()).out, attn(x, Pass()).out
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # never redrawn
    attn.eval()
    torch.testing.assert_close(attn(x, Pass()).out, a, rtol=0, atol=0)
    other = make(kind, seed=1)
    assert any(not torch.equal(attn.state_dict()[n], other.state_dict()[n]) for n in names)
    assert not torch.allclose(other(x, Pass()).out, a)
    buf = io.BytesIO()
    torch.save(attn.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    torch.testing.assert_close(other(x, Pass()).out, a, rtol=0, atol=0)


# ---- linear core: prefix sums == explicit quadratic form ---------------------------------------------------


@pytest.mark.parametrize("kind", LINEAR_KINDS)
def test_linear_core_equals_quadratic_form(kind):
    attn = make(kind).double()
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, H, 13, E // H, generator=g, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(13)
    for causal in (False, True):
        pq, pk = attn.features(q, pos, causal), attn.features(k, pos, causal)
        tril = torch.ones(13, 13, dtype=torch.bool).tril()[None, None] if causal else None
        num_ref, den_ref, _ = linear_quadratic(pq, pk, v, tril)
        if not causal:
            num, den = linear_bidirectional(pq, pk, v)
            paths = [(num, den)]
        else:
            m = pq.shape[-1]
            S0, z0 = pq.new_zeros(2, H, m, E // H), pq.new_zeros(2, H, m)
            paths = [linear_causal_chunked(pq, pk, v, S0, z0, c)[:2] for c in (1, 4, 13, 64)]
            paths.append(linear_causal_cumsum(pq, pk, v, S0, z0)[:2])
        for num, den in paths:
            torch.testing.assert_close(num, num_ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(den, den_ref, rtol=1e-10, atol=1e-10)
        # and the module's fp32 output equals the quadratic form / stabilised denominator
        out = attn.float().core(q.float(), k.float(), v.float(), Pass(causal=causal), pos)[0]
        ref = num_ref / attn.stabilize(den_ref)[..., None]
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
        attn.double()


# ---- per-kind references -------------------------------------------------------------------------------


def core(attn, q, k, v, causal=False):
    pos = torch.arange(q.shape[2])
    return attn.core(q, k, v, Pass(causal=causal), pos)[0]


def qkv(L=7, d=8, heads=H, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, heads, L, d, generator=g) * scale for _ in range(3)]


def test_linear_matches_katharopoulos():
    attn = make("linear")
    q, k, v = qkv()
    assert torch.all(attn.features(q, torch.arange(7), False) > 0)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    K = torch.einsum("bhid,bhjd->bhij", fq, fk).tril()
    ref = (K @ v) / (K.sum(-1, keepdim=True) + 1e-4)
    torch.testing.assert_close(core(attn, q, k, v, causal=True), ref, atol=1e-5, rtol=1e-5)


def arccos_kernel(q, k):
    """E <relu(qW), relu(kW)> / m for W ~ N(0, 1/d): |q||k| (sin t + (pi - t) cos t) / (2 pi d)."""
    nq, nk = q.norm(dim=-1)[:, None], k.norm(dim=-1)[None, :]
    cos = ((q @ k.T) / (nq * nk)).clamp(-1, 1)
    t = torch.arccos(cos)
    return nq * nk * (torch.sin(t) + (math.pi - t) * cos) / (2 * math.pi * q.shape[-1])


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_performer_relu_converges_to_arccos_kernel():
    attn = make("performer", d_model=16, n_heads=1, num_features=16384)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 32, 16, generator=g) for _ in range(3))
    pos = torch.arange(32)
    m = 16384
    approx = attn.features(q, pos, False)[0, 0] @ attn.features(k, pos, False)[0, 0].T / m
    exact = arccos_kernel(q[0, 0], k[0, 0])
    assert rel_err(approx, exact) < 0.05
    ref = (exact @ v[0, 0]) / exact.sum(-1, keepdim=True)
    assert rel_err(core(attn, q, k, v)[0, 0], ref) < 0.05


@pytest.mark.parametrize("orthogonal", [False, True])
def test_performer_softmax_mode_approximates_softmax(orthogonal):
    attn = make(
        "performer", d_model=16, n_heads=1, num_features=16384, kernel="softmax", orthogonal=orthogonal
    )
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 32, 16, generator=g) * s for s in (0.25, 0.25, 1.0))
    pos = torch.arange(32)
    approx = attn.features(q, pos, False)[0, 0] @ attn.features(k, pos, False)[0, 0].T
    exact = torch.exp(q[0, 0] @ k[0, 0].T / 4.0)
    assert rel_err(approx, exact) < 0.02
    ref = F.scaled_dot_product_attention(q, k, v)
    assert rel_err(core(attn, q, k, v), ref) < 0.02


def test_cosformer_matches_explicit_reweighting():
    attn = make("cosformer", max_len=20)
    q, k, v = qkv(L=9)
    assert torch.all(attn.features(q, torch.arange(9), True) >= 0)
    i = torch.arange(9)
    cosw = torch.cos((math.pi / 2) * (i[:, None] - i[None, :]) / 20)
    K = (torch.relu(q) @ torch.relu(k).transpose(-1, -2)) * cosw
    for causal in (False, True):
        Kc = K.tril() if causal else K
        ref = (Kc @ v) / (Kc.sum(-1, keepdim=True) + 1e-4)
        torch.testing.assert_close(core(attn, q, k, v, causal), ref, atol=1e-5, rtol=1e-5)
    # default bidirectional M is the sequence length (source behaviour)
    default = make("cosformer")
    cosL = torch.cos((math.pi / 2) * (i[:, None] - i[None, :]) / 9)
    KL = (torch.relu(q) @ torch.relu(k).transpose(-1, -2)) * cosL
    torch.testing.assert_close(
        core(default, q, k, v), (KL @ v) / (KL.sum(-1, keepdim=True) + 1e-4), atol=1e-5, rtol=1e-5
    )


def test_rff_converges_to_gaussian_kernel():
    attn = make("rff", d_model=16, n_heads=1, num_features=16384)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 32, 16, generator=g)
    k = q + 0.5 * torch.randn(1, 1, 32, 16, generator=g)  # nearby pairs so the kernel is not ~0 everywhere
    q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    pos = torch.arange(32)
    approx = attn.features(q, pos, False)[0, 0] @ attn.features(k, pos, False)[0, 0].T
    exact = torch.exp(-torch.cdist(q[0, 0], k[0, 0]).pow(2) / 2)
    assert rel_err(approx, exact) < 0.05


def test_yat_equals_softmax_of_explicit_formula():
    attn = make("yat")
    q, k, v = qkv()
    s = attn.scores(q, k)
    assert torch.all(s >= 0)
    ref_s = torch.empty_like(s)
    for i in range(7):
        for j in range(7):
            dot = (q[..., i, :] * k[..., j, :]).sum(-1)
            ref_s[..., i, j] = dot**2 / ((q[..., i, :] - k[..., j, :]).pow(2).sum(-1) + 1e-4)
    torch.testing.assert_close(s, ref_s, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(core(attn, q, k, v), torch.softmax(ref_s, -1) @ v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalization", ["softmax", "kernel"])
def test_yat_spherical_bounds_and_invariances(normalization):
    attn = make("yat-spherical", normalization=normalization)
    q, k, v = qkv()
    s = attn.scores(q, k)
    assert torch.all(s >= 0) and torch.all(s <= 1 / 1e-2 + 1e-3)
    sq = torch.rand(2, H, 7, 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    torch.testing.assert_close(
        core(attn, q * sq, k * sq.flip(2), v), core(attn, q, k, v), atol=1e-5, rtol=1e-4
    )
    x = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-1, -2)
    ref_s = x**2 / (2.01 - 2 * x)
    w = (
        torch.softmax(ref_s, -1)
        if normalization == "softmax"
        else ref_s / (ref_s.sum(-1, keepdim=True) + 1e-6)
    )
    torch.testing.assert_close(core(attn, q, k, v), w @ v, atol=1e-5, rtol=1e-4)
    if normalization == "kernel":
        scaled = make("yat-spherical", normalization="kernel", score_scale=7.0)
        torch.testing.assert_close(core(scaled, q, k, v), core(attn, q, k, v), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["yat", "yat-spherical"])
def test_yat_hand_written_score_gradient_equals_autograd_of_the_formula(kind):
    """The Yat scores have a hand-written backward (two saved L x L tensors instead of five): gradients of q
    and k must equal autograd through the plain formula, in float64, including clamped entries."""
    attn = make(kind, score_scale=1.7).double()
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, H, 9, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, H, 11, 8, generator=g, dtype=torch.float64)
    k[:, :, :3] = q[:, :, :3] + 1e-3 * torch.randn(
        2, H, 3, 8, generator=g, dtype=torch.float64
    )  # near q: tiny distances
    if kind == "yat-spherical":
        k[:, :, 3] = q[:, :, 3] * 2.0  # cosine 1: the largest score, 1 / epsilon

    def formula(q, k):
        if kind == "yat":
            dot = q @ k.transpose(-1, -2)
            dist = (q.pow(2).sum(-1)[..., :, None] + k.pow(2).sum(-1)[..., None, :] - 2 * dot).clamp_min(0.0)
            return dot.pow(2) / (dist + 1e-4) * 1.7
        x = F.normalize(q, dim=-1, eps=1e-6) @ F.normalize(k, dim=-1, eps=1e-6).transpose(-1, -2)
        return x.pow(2) / (2.01 - 2 * x).clamp_min(1e-4) * 1.7

    w = torch.randn(2, H, 9, 11, generator=g, dtype=torch.float64)
    q1, k1 = q.clone().requires_grad_(), k.clone().requires_grad_()
    q2, k2 = q.clone().requires_grad_(), k.clone().requires_grad_()
    ours, ref = attn.scores(q1, k1), formula(q2, k2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(k1.grad, k2.grad, rtol=1e-7, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda a, b: attn.scores(a, b),
        (q[:1, :1, :4].clone().requires_grad_(), k[:1, :1, 2:6].clone().requires_grad_()),
    )


# ---- SLAY components -------------------------------------------------------------------------------------

C = 2.0 + 1e-6


@pytest.mark.parametrize("R,bound", [(1, 0.2), (2, 0.03), (4, 5e-4), (8, 1e-7)])
def test_slay_quadrature_error(R, bound):
    """sum_r w_r x^2 e^{2 s_r x} vs x^2/(C - 2x) over |x| <= 0.5 (calibrated: .18, .024, 3.9e-4, 7.9e-8)."""
    attn = make("slay-anchor", num_quadrature_nodes=R)
    s, w = attn.nodes.double(), attn.node_weights.double()
    t, _a = laguerre_nodes(R)
    torch.testing.assert_close(s, t / C)
    x = torch.linspace(-0.5, 0.5, 1001, dtype=torch.float64)
    ratio = (C - 2 * x) * (w[None] * torch.exp(2 * (t / C)[None] * x[:, None])).sum(-1)  # approx / exact
    err = float((ratio - 1).abs().max())
    assert err < bound
    assert err > bound / 3  # the calibrated value, not a trivially loose bound


def test_slay_laplace_identity():
    """With R = 32 and exact exponentials, sum_r w'_r e^{2 s_r x} = x^2/(C-2x) + C/4 + x/2."""
    t, a = laguerre_nodes(32)
    w = SlayLaplaceAttention.quadrature_weights(a, C)
    x = torch.linspace(-0.5, 0.5, 201, dtype=torch.float64)
    approx = (w[None] * torch.exp(2 * (t / C)[None] * x[:, None])).sum(-1)
    torch.testing.assert_close(approx, x**2 / (C - 2 * x) + C / 4 + x / 2, rtol=0, atol=1e-12)


def unit_pairs(n=24, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=g, dtype=torch.float64)
    k = q + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)


@pytest.mark.parametrize("s", [0.5, 1 / C])
def test_slay_prf_is_unbiased(s):
    attn = make("slay-laplace", d_model=16, n_heads=1, num_features=16384, num_quadrature_nodes=1).double()
    attn.nodes.fill_(s)
    q, k = unit_pairs()
    fq, fk = (
        attn.prf(attn.projection(q[None, None], 0), 0)[0, 0],
        attn.prf(attn.projection(k[None, None], 0), 0)[0, 0],
    )
    assert rel_err(fq @ fk.T, torch.exp(2 * s * (q @ k.T))) < 0.06


def test_slay_polynomial_maps_match_their_expectations():
    d, P = 16, 16384
    q, k = unit_pairs()
    x = q @ k.T
    anchor = make("slay-anchor", d_model=16, n_heads=1, poly_dim=P).double()
    got = anchor.poly(q[None, None])[0, 0] @ anchor.poly(k[None, None])[0, 0].T  # = mean_p (a.q)^2 (a.k)^2
    assert rel_err(got, (1 + 2 * x**2) / (d * (d + 2))) < 0.05
    rm = make("slay-rm", d_model=16, n_heads=1, poly_dim=P).double()
    got = rm.poly(q[None, None])[0, 0] @ rm.poly(k[None, None])[0, 0].T
    assert rel_err(got, x**2 / d**2) < 0.15
    ny = make("slay-nystrom", d_model=16, n_heads=1, poly_dim=d * (d + 1) // 2 + 8, nystrom_reg=1e-8).double()
    got = ny.poly(q[None, None])[0, 0] @ ny.poly(k[None, None])[0, 0].T * ny.anchors.shape[0]
    torch.testing.assert_close(got, x**2, rtol=0, atol=1e-5)


def test_slay_tensorsketch_is_unbiased_over_hash_draws():
    """Mean over 4000 independent (h, sign) draws of <TS(x), TS(y)> * P -> (x.y)^2 (within ~3 %)."""
    d, P, draws = 16, 16, 4000
    q, k = unit_pairs(n=6)
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(6, 6, dtype=torch.float64)
    for _ in range(draws // 500):  # 500 independent sketches at a time, built like the module's
        h = torch.randint(0, P, (500, 2, d), generator=g)
        sign = torch.randint(0, 2, (500, 2, d), generator=g).double() * 2 - 1
        sk = torch.nn.functional.one_hot(h, P).double() * sign[..., None]  # (500, 2, d, P)
        ts = []
        for u in (q, k):
            c1, c2 = u[None] @ sk[:, 0], u[None] @ sk[:, 1]  # (500, n, P)
            ts.append(torch.fft.irfft(torch.fft.rfft(c1, n=P) * torch.fft.rfft(c2, n=P), n=P) / math.sqrt(P))
        total += (ts[0] @ ts[1].transpose(-1, -2)).sum(0) * P
    mean = total / (draws // 500 * 500)
    assert rel_err(mean, (q @ k.T) ** 2) < 0.06
    # the module's sketches are CountSketch matrices (one +-1 per row) and poly() is TS as defined
    attn = make("slay-tensor", d_model=16, n_heads=1, poly_dim=P).double()
    assert torch.all((attn.sketch != 0).sum(-1) == 1) and torch.all(attn.sketch.abs().sum(-1) == 1)
    c1, c2 = q @ attn.sketch[0], q @ attn.sketch[1]
    ref = torch.fft.irfft(torch.fft.rfft(c1) * torch.fft.rfft(c2), n=P) / math.sqrt(P)
    torch.testing.assert_close(attn.poly(q[None, None])[0, 0], ref)
    direct = torch.zeros(6, P, dtype=torch.float64)  # circular convolution written out
    for a in range(P):
        for b in range(P):
            direct[:, (a + b) % P] += c1[:, a] * c2[:, b]
    torch.testing.assert_close(ref, direct / math.sqrt(P))


def hadamard_closed_form(s, x):
    """E[f(a) f(b)], f(p) = p^2 e^{sqrt(2s) p - s}, (a, b) standard normal with correlation x
    (docs/attention.md §3.10)."""
    return torch.exp(2 * s * x) * ((1 + 2 * s * (1 + x) ** 2) ** 2 + 2 * x**2 + 8 * s * x * (1 + x) ** 2)


def test_slay_hadamard_features_and_their_expectation():
    """E<Psi_r(q), Psi_r(k)> = (w_r/M) e^{2sx} [(1 + 2s(1+x)^2)^2 + 2x^2 + 8 s x (1+x)^2]."""
    # (1) the module computes Psi_r = sqrt(w_r) (proj^2 / sqrt M) * exp(clip(sqrt(2 s_r) proj - s_r)) / sqrt M
    M = 64
    attn = make("slay", d_model=16, n_heads=1, num_features=M).double()
    q, _k = unit_pairs(n=6)
    parts = []
    for r in range(2):
        proj, s = q @ attn.omega[r, 0], attn.nodes[r]
        prf = torch.exp((torch.sqrt(2 * s) * proj - s).clamp(-10, 10)) / math.sqrt(M)
        parts.append(torch.sqrt(attn.node_weights[r]) * proj**2 / math.sqrt(M) * prf)
    torch.testing.assert_close(attn.features(q[None, None], None, False)[0, 0], torch.cat(parts, -1))
    # (2) the closed form equals the Gaussian expectation (2-D Gauss-Hermite quadrature, exact here)
    t, wt = (torch.from_numpy(a) for a in np.polynomial.hermite_e.hermegauss(80))
    wt = wt / math.sqrt(2 * math.pi)
    for s in (float(attn.nodes[0]), float(attn.nodes[1])):
        for x in (-0.5, 0.0, 0.3, 0.9):
            a, b = t[:, None], x * t[:, None] + math.sqrt(1 - x * x) * t[None, :]
            f = lambda p: p**2 * torch.exp(math.sqrt(2 * s) * p - s)  # noqa: E731
            quad = (wt[:, None] * wt[None, :] * f(a) * f(b)).sum()
            torch.testing.assert_close(
                quad, hadamard_closed_form(s, torch.tensor(x, dtype=torch.float64)), rtol=1e-9, atol=0
            )
    # (3) Monte Carlo through the module, independent unit vectors. The estimator is heavy-tailed
    # (p^4 e^{2 sqrt(2s) p}): over draws 0..3 the error was 0.08, 0.12, 0.24, 0.10, hence the loose bound
    big = make("slay", d_model=16, n_heads=1, num_features=200_000, num_quadrature_nodes=1).double()
    g = torch.Generator().manual_seed(7)
    u = torch.nn.functional.normalize(torch.randn(2, 8, 16, generator=g, dtype=torch.float64), dim=-1)
    fq, fk = (
        big.features(u[0][None, None], None, False)[0, 0],
        big.features(u[1][None, None], None, False)[0, 0],
    )
    s, w = float(big.nodes[0]), float(big.node_weights[0])
    assert rel_err(fq @ fk.T, (w / 200_000) * hadamard_closed_form(s, u[0] @ u[1].T)) < 0.3


@pytest.mark.parametrize("kind", ["slay", "slay-laplace", "slay-anchor"])
def test_slay_positive_features(kind):
    attn = make(kind)
    q, _, _ = qkv(L=16, scale=3.0)
    assert torch.all(attn.features(q, torch.arange(16), False) > 0)


@pytest.mark.parametrize("kind", [k for k in KINDS if k.startswith("slay")])
def test_slay_scale_invariance(kind):
    attn = make(kind)
    q, k, v = qkv()
    sq = torch.rand(2, H, 7, 1, generator=torch.Generator().manual_seed(1)) * 10 + 0.1
    for causal in (False, True):
        torch.testing.assert_close(
            core(attn, q * sq, k * sq.flip(2), v, causal), core(attn, q, k, v, causal), atol=1e-5, rtol=1e-4
        )


def test_slay_anchor_error_to_spherical_yat_shrinks_with_features():
    """Loose trend test: against kernel-normalised yat-spherical (same epsilon), M = 4096 beats M = 16."""
    exact = make("yat-spherical", d_model=16, n_heads=1, normalization="kernel", epsilon=1e-6)
    errs = {}
    for M in (16, 4096):
        e = []
        for seed in range(3):
            q, k, v = qkv(L=64, d=16, heads=1, seed=seed)
            slay = make("slay-anchor", seed=seed, d_model=16, n_heads=1, num_features=M)
            e.append(rel_err(core(slay, q, k, v), core(exact, q, k, v)))
        errs[M] = sum(e) / 3
    assert errs[4096] < errs[16]


@pytest.mark.parametrize(
    "kind", ["linear", "performer", "cosformer", "rff", "yat", "yat-spherical", "slay-anchor"]
)
def test_use_rope_on_other_kinds(kind):
    """RoPE before the score / feature map: cached decoding still equals the full pass, and the bidirectional
    output stops being permutation-equivariant (positions now matter)."""
    attn = make(kind, use_rope=True, **({"chunk_size": 4} if kind in LINEAR_KINDS else {}))
    assert attn.rope is not None and make(kind).rope is None
    x = rand_x(L=9)
    full = attn(x, Pass(causal=True)).out
    out, state = attn.decode(x[:, :4], Pass(causal=True), None)
    outs = [out]
    for t in range(4, 9):
        out, state = attn.decode(x[:, t : t + 1], Pass(causal=True, offset=t), state)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(attn(x[:, perm], Pass()).out, attn(x, Pass()).out[:, perm], atol=1e-4)
