"""Fused softmax attention (F.scaled_dot_product_attention) against the explicit path it replaces.

Every kind whose core is exact softmax(q k^T / sqrt(d) + mask) v (standard, rotary) must give the explicit
path's outputs and gradients within 1e-5 in float32 with causal masks, padding masks (fully masked query
rows included), a KV cache and in a whole model; both are checked against a float64 brute-force formula.
The explicit path is what `return_attention=True` runs, or a layer with `fused = False`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lm.attention_kinds import resolve_attention_options
from lm.config import ATTENTION_KINDS, ModelConfig
from lm.infer.generate import generate
from lm.model import build_model
from lm.model.attention import Pass, attention_class
from lm.model.attention.base import Attention, ExactAttention
from lm.model.positions import RotaryEmbedding

E, H, MAXLEN = 16, 2, 40
FUSED_KINDS = [k for k in ATTENTION_KINDS if getattr(attention_class(k), "fused", False)]

pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind: str, dropout: float = 0.0) -> Attention:
    torch.manual_seed(1234)
    return attention_class(kind)(
        d_model=E,
        n_heads=H,
        bias=True,
        attention_dropout=dropout,
        max_len=MAXLEN,
        options=resolve_attention_options(kind, {}),
        generator=torch.Generator().manual_seed(0),
    ).eval()


def explicit(layer: Attention) -> Attention:
    """The same layer (shared weights) forced onto the explicit path."""
    import copy

    twin = copy.deepcopy(layer)
    twin.fused = False
    return twin


def rand_x(B=3, L=11, seed=0):
    return torch.randn(B, L, E, generator=torch.Generator().manual_seed(seed), requires_grad=True)


def masks(B=3, L=11):
    """Row 0 full, row 1 right-padded, row 2 left-padded (its first queries see no real key when causal)."""
    m = torch.ones(B, L, dtype=torch.bool)
    m[1, 7:] = False
    m[2, :4] = False
    return m


def brute_force(layer: Attention, x: torch.Tensor, key_mask, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + finfo.min where not allowed) v, in float64, by hand."""
    B, L, _ = x.shape
    xd = x.detach().double()
    W, b = layer.qkv.weight.double(), layer.qkv.bias.double()
    q, k, v = (xd @ W.T + b).split(E, dim=-1)
    q, k, v = (t.view(B, L, H, E // H).transpose(1, 2) for t in (q, k, v))
    if layer.rope is not None:
        pos = torch.arange(L)
        q, k = layer.rope(q, pos), layer.rope(k, pos)
    allowed = torch.ones(B, 1, L, L, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    s = torch.einsum("bhid,bhjd->bhij", q, k) / (E // H) ** 0.5
    s = s.masked_fill(~allowed, torch.finfo(torch.float64).min)
    o = torch.softmax(s, -1) @ v  # (B, H, L, d); a row with nothing allowed is uniform, as the explicit path
    o = o.transpose(1, 2).reshape(B, L, E)
    return o @ layer.proj.weight.double().T + layer.proj.bias.double()


def live_rows(key_mask, causal: bool, L: int) -> torch.Tensor:
    """(B, L) bool: query rows with at least one allowed key."""
    if key_mask is None:
        return torch.ones(3, L, dtype=torch.bool)
    return key_mask.cumsum(1) > 0 if causal else key_mask.any(1, keepdim=True).expand(-1, L)


def test_fused_kinds_are_the_softmax_dot_product_kinds():
    """The kinds whose core is exactly softmax(q.k / sqrt d): the others' scores are not a dot product."""
    assert FUSED_KINDS == ["standard", "rotary"]
    for kind in ATTENTION_KINDS:
        cls = attention_class(kind)
        assert getattr(cls, "fused", False) == (kind in FUSED_KINDS)
        if getattr(cls, "fused", False):
            assert issubclass(cls, ExactAttention) and cls.normalization == "softmax"


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_equals_explicit_and_brute_force(kind, causal, padded):
    layer = make(kind)
    x = rand_x()
    key_mask = masks() if padded else None
    fused = layer(x, Pass(key_mask=key_mask, causal=causal))
    slow = layer(x, Pass(key_mask=key_mask, causal=causal, return_attention=True))
    assert fused.weights is None and slow.weights is not None
    torch.testing.assert_close(fused.out, slow.out, atol=1e-5, rtol=1e-5)
    ref = brute_force(layer, x, key_mask, causal)
    torch.testing.assert_close(fused.out.double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(fused.out).all()


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("causal", [False, True])
def test_fused_gradients_equal_explicit(kind, causal):
    """Gradients w.r.t. the input and every weight, for a loss on the rows that see at least one key (all
    rows of lm's losses: padding rows are never read). A loss that includes fully masked rows still gets
    finite gradients."""
    key_mask = masks()
    live = live_rows(key_mask, causal, 11)
    assert live.all() != causal  # causal: the left-padded row's first queries see no key
    layer = make(kind)
    slow = explicit(layer)
    target = torch.randn(3, 11, E, generator=torch.Generator().manual_seed(3))
    grads = []
    for net in (layer, slow):
        x = rand_x()
        out = net(x, Pass(key_mask=key_mask, causal=causal)).out
        loss = ((out - target).square() * live[..., None]).sum()
        grads.append(torch.autograd.grad(loss, [x, *net.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x = rand_x()
    layer(x, Pass(key_mask=key_mask, causal=causal)).out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_fused_bidirectional_padding_uses_no_mask_matrix_and_fully_masked_rows_stay_finite(monkeypatch):
    """Bidirectional padding is a (B, 1, 1, T) additive mask; plain causal is is_causal (no mask tensor);
    a sequence that is all padding gives the explicit path's uniform average, not NaN or zeros."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append((None if attn_mask is None else tuple(attn_mask.shape), dropout_p, is_causal, q.dtype))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    layer = make("standard")
    x = rand_x()
    key_mask = masks()
    key_mask[0] = False  # a sequence of padding only
    out = layer(x, Pass(key_mask=key_mask)).out
    layer(x, Pass(causal=True))
    assert calls == [((3, 1, 1, 11), 0.0, False, torch.float32), (None, 0.0, True, torch.float32)]
    torch.testing.assert_close(out, explicit(layer)(x, Pass(key_mask=key_mask)).out, atol=1e-5, rtol=1e-5)
    v = layer.qkv(x)[0, :, 2 * E :]  # (L, E): the values of the all-padding row, mean over every key
    mean = layer.proj(v.mean(0))
    torch.testing.assert_close(out[0], mean.expand(11, E), atol=1e-5, rtol=1e-5)
    calls.clear()
    layer(x, Pass(return_attention=True))  # the weights are asked for: the explicit path
    assert calls == []


def test_fused_never_holds_the_score_matrix():
    """What autograd saves for backward: the explicit path keeps (B, H, L, L) tensors, the fused path none
    bigger than the (B, H, L, d) inputs and outputs (plus per-row statistics)."""
    L = 256

    def largest_saved(layer: Attention) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            layer(torch.randn(1, L, E, requires_grad=True), Pass(causal=True)).out.sum()
        return max(sizes)

    layer = make("standard")
    assert largest_saved(explicit(layer)) >= H * L * L
    assert largest_saved(layer) <= 4 * L * E


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fused_kv_cache_equals_explicit_and_recompute(kind):
    """Incremental decoding with a padded prompt: step by step through the cache, the fused layer equals the
    explicit layer (every row), and both equal the fused full recompute on the rows that see a key (a fully
    masked row averages every key it is shown, and the prefill shows fewer than the full pass)."""
    layer = make(kind)
    slow = explicit(layer)
    x = rand_x(B=2, L=12).detach()
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[1, :3] = False  # left padding inside the cached prompt
    with torch.no_grad():
        full = layer(x, Pass(key_mask=key_mask, causal=True)).out
        live = live_rows(key_mask, True, 12)[..., None]
        steps = []
        for net in (layer, slow):
            out, state = net.decode(x[:, :5], Pass(key_mask=key_mask[:, :5], causal=True), None)
            outs = [out]
            for t in range(5, 12):
                out, state = net.decode(
                    x[:, t : t + 1], Pass(key_mask=key_mask[:, t : t + 1], causal=True, offset=t), state
                )
                outs.append(out)
            steps.append(torch.cat(outs, 1))
            torch.testing.assert_close(steps[-1] * live, full * live, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(steps[0], steps[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fused_generation_equals_explicit(kind):
    """Greedy generation with the cache: the fused decoder picks the same tokens with the same logits as the
    same decoder on the explicit path."""
    cfg = ModelConfig(
        d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, attention=kind, tie_embeddings=False
    )
    model = build_model(cfg, task="clm", vocab_size=30, max_len=24, pad_id=0, seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.eval()
    fused_ids = generate(model, [3, 7, 1, 4], max_new_tokens=16, temperature=0, use_cache=True)
    ids = torch.tensor([[3, 7, 1, 4, *fused_ids]])
    with torch.no_grad():
        fused_logits = model(ids).logits
        for block in model.trunk.blocks:
            block.attn.fused = False
        assert generate(model, [3, 7, 1, 4], max_new_tokens=16, temperature=0, use_cache=True) == fused_ids
        torch.testing.assert_close(model(ids).logits, fused_logits, atol=1e-5, rtol=1e-5)
    assert len(set(fused_ids)) >= 4  # a varied path, so the comparison means something


@pytest.mark.parametrize("kind", FUSED_KINDS)
@pytest.mark.parametrize("task", ["classify", "mlm", "clm"])
def test_fused_model_equals_explicit_with_gradients(kind, task):
    """A whole model on padded batches: the fused forward (training path) equals the explicit one
    (return_attention), logits and every parameter's gradient."""
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, attention=kind, pooling="mean")
    model = build_model(cfg, task=task, vocab_size=30, max_len=24, pad_id=0, seed=2)
    ids = torch.randint(1, 30, (3, 13), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    live = mask.bool()[..., None]
    fast = model(ids, mask)
    slow = model(ids, mask, return_attention=True)
    assert fast.attentions is None and slow.attentions is not None
    keep = live if fast.logits.dim() == 3 else torch.ones_like(fast.logits, dtype=torch.bool)
    torch.testing.assert_close(fast.logits * keep, slow.logits * keep, atol=1e-5, rtol=1e-5)
    params = list(model.parameters())
    g_fast = torch.autograd.grad((fast.logits * keep).square().sum(), params, allow_unused=True)
    g_slow = torch.autograd.grad((slow.logits * keep).square().sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_slow):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_dropout_is_the_layer_probability_in_training_only(monkeypatch):
    """Attention dropout reaches SDPA as dropout_p in training and 0 in eval; a training pass drops weights
    (differs from eval), is reproducible from the torch seed, and averages to the eval output."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kw):
        seen.append(kw.get("dropout_p", 0.0))
        return real(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    layer = make("standard", dropout=0.3)
    x = rand_x(B=1, L=8).detach()
    with torch.no_grad():
        ref = layer(x, Pass(causal=True)).out
        layer.train()
        torch.manual_seed(5)
        a = layer(x, Pass(causal=True)).out
        torch.manual_seed(5)
        b = layer(x, Pass(causal=True)).out
        mean = torch.stack([layer(x, Pass(causal=True)).out for _ in range(2000)]).mean(0)
    assert seen[:3] == [0.0, 0.3, 0.3]
    torch.testing.assert_close(a, b)
    assert (a - ref).abs().max() > 1e-3
    assert (mean - ref).abs().max() < 0.05 * ref.abs().max()


def test_fused_on_cpu_keeps_float32_under_bf16_autocast(monkeypatch):
    """On CPU the core stays float32 under autocast (as the explicit path); on CUDA it would run in bf16."""
    dtypes = []
    real = F.scaled_dot_product_attention

    def spy(q, *args, **kw):
        dtypes.append(q.dtype)
        return real(q, *args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    layer = make("standard")
    x = rand_x().detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, Pass(key_mask=masks())).out
    assert dtypes == [torch.float32]
    assert layer.core_dtype(torch.bfloat16, torch.device("cpu"), False) == torch.float32
    assert layer.core_dtype(torch.bfloat16, torch.device("cuda"), False) == torch.bfloat16
    assert layer.core_dtype(torch.bfloat16, torch.device("cuda"), True) == torch.float32  # explicit: fp32
    assert make("yat").core_dtype(torch.bfloat16, torch.device("cuda"), False) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slow = explicit(layer)(x, Pass(key_mask=masks())).out
    torch.testing.assert_close(out, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_fused_cuda_runs_in_the_autocast_dtype(amp):
    layer = make("rotary").cuda()
    x = rand_x(L=64).detach().cuda()
    key_mask = torch.ones(3, 64, dtype=torch.bool, device="cuda")
    key_mask[1, 40:] = False
    ref = explicit(layer)(x, Pass(key_mask=key_mask, causal=True)).out
    with torch.autocast("cuda", dtype=amp):
        out = layer(x, Pass(key_mask=key_mask, causal=True)).out
    assert out.dtype == amp
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_fused_rope_is_applied_before_the_kernel():
    """rotary through the fused path equals SDPA on RoPE-rotated q and k (and differs from no RoPE)."""
    layer = make("rotary")
    x = rand_x().detach()
    B, L, _ = x.shape
    q, k, v = (t.view(B, L, H, E // H).transpose(1, 2) for t in layer.qkv(x).split(E, dim=-1))
    rope, pos = RotaryEmbedding(E // H), torch.arange(L)
    o = F.scaled_dot_product_attention(rope(q, pos), rope(k, pos), v, is_causal=True)
    ref = layer.proj(o.transpose(1, 2).reshape(B, L, E))
    torch.testing.assert_close(layer(x, Pass(causal=True)).out, ref, atol=1e-5, rtol=1e-5)
