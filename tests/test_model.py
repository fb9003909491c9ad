"""Model level: parts against torch references, every option combination, KV cache == recompute, causality,
padding invariance, tied embeddings, determinism, and a tiny model overfitting a tiny batch for each task."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lm.attention_kinds import resolve_attention_options
from lm.config import ATTENTION_KINDS, ModelConfig
from lm.errors import LmError
from lm.model import CausalLM, KVCache, MaskedLM, ModelOutput, SequenceClassifier, build_model
from lm.model.attention import Pass
from lm.model.block import Block
from lm.model.mlp import GeluMLP, SwiGLU
from lm.model.norms import LayerNorm, RMSNorm
from lm.model.positions import sinusoidal_table

V, MAXLEN, PAD = 40, 24, 0

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def ids(B=2, L=10, seed=0):
    return torch.randint(1, V, (B, L), generator=torch.Generator().manual_seed(seed))


# ---- parts ----------------------------------------------------------------------------------------------


def test_norms_match_torch():
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0)) * 3 + 1
    for eps in (1e-5, 1e-2):
        ln, ln_nobias, rms = LayerNorm(12, eps=eps), LayerNorm(12, eps=eps, bias=False), RMSNorm(12, eps=eps)
        with torch.no_grad():
            for p in (ln.weight, ln.bias, rms.weight, ln_nobias.weight):
                p.normal_()
        xd = x.double()  # the formula by hand, in fp64
        normed = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + eps)
        torch.testing.assert_close(ln(x), (normed * ln.weight.double() + ln.bias.double()).float())
        assert ln_nobias.bias is None and len(list(ln_nobias.parameters())) == 1
        torch.testing.assert_close(ln_nobias(x), (normed * ln_nobias.weight.double()).float())
        torch.testing.assert_close(ln(x.bfloat16()), ln(x).bfloat16(), atol=2e-2, rtol=2e-2)  # fp32 inside
        ref = nn.RMSNorm(12, eps=eps)
        with torch.no_grad():
            ref.weight.copy_(rms.weight)
        torch.testing.assert_close(rms(x), ref(x))


def test_mlps_match_formulas():
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
    g = GeluMLP(8, 16)
    torch.testing.assert_close(
        g(x), g.fc_out.bias + F.gelu(x @ g.fc_in.weight.T + g.fc_in.bias) @ g.fc_out.weight.T
    )
    s = SwiGLU(8, 16)
    w1, w3 = s.fc_in.weight[:16], s.fc_in.weight[16:]
    torch.testing.assert_close(s(x), (F.silu(x @ w1.T) * (x @ w3.T)) @ s.fc_out.weight.T)
    sb = SwiGLU(8, 16, bias=True)
    (w1, w3), (b1, b3) = sb.fc_in.weight.chunk(2), sb.fc_in.bias.chunk(2)
    ref = (F.silu(x @ w1.T + b1) * (x @ w3.T + b3)) @ sb.fc_out.weight.T + sb.fc_out.bias
    torch.testing.assert_close(sb(x), ref)
    assert GeluMLP(8, 16, bias=False).fc_in.bias is None


def test_sinusoidal_table_matches_formula():
    t = sinusoidal_table(7, 6)
    for p in range(7):
        for i in range(3):
            assert math.isclose(t[p, 2 * i], math.sin(p / 10000 ** (2 * i / 6)), abs_tol=1e-6)
            assert math.isclose(t[p, 2 * i + 1], math.cos(p / 10000 ** (2 * i / 6)), abs_tol=1e-6)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_pre_and_post_norm_blocks(norm_position):
    """Post-norm normalises after each residual (outputs have zero mean, unit variance per token); pre-norm
    leaves the residual stream unnormalised and the trunk adds a final norm."""
    c = cfg(norm_position=norm_position)
    options = resolve_attention_options(c.attention, c.attention_options)
    block = Block(c, max_len=MAXLEN, generator=torch.Generator().manual_seed(0), attention_options=options)
    x = torch.randn(2, 6, 16) * 4 + 2
    y, _ = block(x, Pass())
    normalised = torch.allclose(y.mean(-1), torch.zeros(2, 6), atol=1e-4) and torch.allclose(
        y.var(-1, unbiased=False), torch.ones(2, 6), atol=1e-3
    )
    assert normalised == (norm_position == "post")
    if norm_position == "pre":  # h = x + attn(norm1(x)); y = h + mlp(norm2(h))
        h = x + block.attn(block.norm1(x), Pass()).out
        ref = h + block.mlp(block.norm2(h))
    else:  # h = norm1(x + attn(x)); y = norm2(h + mlp(h))
        h = block.norm1(x + block.attn(x, Pass()).out)
        ref = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(y, ref)
    model = build_model(c, task="mlm", vocab_size=V, max_len=MAXLEN, pad_id=PAD)
    assert isinstance(model.trunk.final_norm, nn.Identity) == (norm_position == "post")


# ---- every option combination ---------------------------------------------------------------------------

COMBOS = list(
    itertools.product(
        ["learned", "sinusoidal", "none"],
        ["layernorm", "rmsnorm"],
        ["pre", "post"],
        ["gelu", "swiglu"],
        ["cls", "mean"],
    )
)


@pytest.mark.parametrize("positions,norm,norm_position,mlp,pooling", COMBOS)
def test_every_option_combination_runs_forward_and_backward(positions, norm, norm_position, mlp, pooling):
    c = cfg(
        positions=positions,
        norm=norm,
        norm_position=norm_position,
        mlp=mlp,
        pooling=pooling,
        n_layers=1,
        dropout=0.1,
        attention_dropout=0.1,
        bias=pooling == "cls",
        tie_embeddings=mlp == "gelu",
    )
    x = ids(L=8)
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    for task in ("classify", "mlm", "clm"):
        model = build_model(c, task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD).train()
        out = model(x, mask)
        assert isinstance(out, ModelOutput)
        assert out.logits.shape == ((2,) if task == "classify" else (2, 8, V))
        out.logits.float().square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.config is c and model.max_len == MAXLEN


# ---- decoder: KV cache, causality ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_kv_cache_equals_recompute(kind):
    model = build_model(
        cfg(attention=kind), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=3
    ).eval()
    x = ids(L=12)
    with torch.no_grad():
        full = model(x).logits
        out = model.decode(x[:, :5])
        assert isinstance(out.cache, KVCache) and out.cache.length == 5
        logits, cache = [out.logits], out.cache
        for t in range(5, 12):
            out = model.decode(x[:, t : t + 1], cache=cache)
            logits.append(out.logits)
            cache = out.cache
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-4, rtol=1e-4)
    assert cache.length == 12


@pytest.mark.parametrize("kind", ["standard", "rotary", "linear", "cosformer", "yat", "slay-anchor"])
def test_causal_lm_output_at_t_ignores_later_tokens(kind):
    model = build_model(
        cfg(attention=kind, positions="learned"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD
    ).eval()
    x = ids(L=12)
    y = x.clone()
    y[:, 7:] = ids(L=5, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits[:, :7], model(y).logits[:, :7], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(x).logits[:, 7:], model(y).logits[:, 7:])


def test_cache_rejects_overflow_and_encoders():
    model = build_model(cfg(), task="clm", vocab_size=V, max_len=8, pad_id=PAD)
    out = model.decode(ids(L=8))
    with pytest.raises(LmError, match="max_len"):
        model.decode(ids(L=1), cache=out.cache)
    enc = build_model(cfg(), task="mlm", vocab_size=V, max_len=8, pad_id=PAD)
    assert not hasattr(enc, "decode")
    with pytest.raises(LmError, match="causal"):
        enc.trunk.decode(ids(L=4), None, None)


# ---- padding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_changes_nothing_for_the_classifier(kind, pooling):
    model = build_model(
        cfg(attention=kind, pooling=pooling), task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD
    ).eval()
    x = ids(L=12)
    mask = torch.ones_like(x)
    mask[0, 6:] = 0
    mask[1, 9:] = 0
    y = torch.where(mask.bool(), x, ids(L=12, seed=5))  # different junk in the padded slots
    with torch.no_grad():
        a, b = model(x, mask).logits, model(y, mask).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if kind != "cosformer":  # bidirectional cosformer uses M = padded length (source behaviour)
            wider = torch.cat([x, torch.full((2, 5), PAD)], 1)
            wmask = torch.cat([mask, torch.zeros(2, 5, dtype=mask.dtype)], 1)
            torch.testing.assert_close(model(wider, wmask).logits, a, atol=1e-5, rtol=1e-5)
            if pooling == "mean":
                single = model(x[:1, :6]).logits  # an unpadded row alone gives the same score
                torch.testing.assert_close(single, a[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_cls_classifier_computing_only_row_0_in_the_last_block_equals_the_full_trunk(kind, norm_position):
    """The CLS classifier runs the last block for position 0 only; asking for the attention maps runs every
    row (the plain trunk), and logits and gradients must agree."""
    model = build_model(
        cfg(attention=kind, norm_position=norm_position, pooling="cls"),
        task="classify",
        vocab_size=V,
        max_len=MAXLEN,
        pad_id=PAD,
    )
    x = ids(B=3, L=12)
    mask = torch.ones_like(x)
    mask[0, 7:] = 0
    fast = model(x, mask)
    full = model(x, mask, return_attention=True)
    assert fast.attentions is None and len(full.attentions) == 2
    torch.testing.assert_close(fast.logits, full.logits, atol=1e-6, rtol=1e-5)
    params = list(model.parameters())
    g_fast = torch.autograd.grad(fast.logits.sum(), params, allow_unused=True)
    g_full = torch.autograd.grad(full.logits.sum(), params, allow_unused=True)
    for p, a, b in zip(params, g_fast, g_full):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    hidden = model.cls_hidden(x, mask.bool())
    assert hidden.shape == (3, 16)
    torch.testing.assert_close(hidden, model.trunk(x, mask.bool()).hidden[:, 0], atol=1e-6, rtol=1e-5)


def test_padding_changes_nothing_for_mlm_and_clm():
    for task in ("mlm", "clm"):
        model = build_model(cfg(), task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD).eval()
        x = ids(L=10)
        mask = torch.ones_like(x)
        mask[:, 7:] = 0
        y = torch.where(mask.bool(), x, ids(L=10, seed=5))
        with torch.no_grad():
            torch.testing.assert_close(model(x, mask).logits[:, :7], model(y, mask).logits[:, :7])
            torch.testing.assert_close(
                model(x[:, :7]).logits, model(x, mask).logits[:, :7], atol=1e-5, rtol=1e-5
            )


def test_returned_attentions_per_layer():
    for kind in ("standard", "slay-anchor"):
        model = build_model(
            cfg(attention=kind, n_layers=3), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD
        )
        x = ids(L=9)
        mask = torch.ones_like(x)
        mask[1, 6:] = 0
        out = model(x, mask, return_attention=True)
        assert len(out.attentions) == 3
        allowed = mask.bool()[:, None, None, :] & torch.ones(9, 9, dtype=torch.bool).tril()
        for w in out.attentions:
            assert w.shape == (2, 2, 9, 9)
            assert torch.all(w.masked_select(~allowed.expand_as(w)) == 0)
            rows = w.sum(-1)[allowed.any(-1).expand(2, 2, 9)]
            torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-3, rtol=0)
        assert model(x).attentions is None


# ---- parameters, seeds, storage -------------------------------------------------------------------------


def test_tied_embeddings_share_storage():
    for task, cls in (("mlm", MaskedLM), ("clm", CausalLM)):
        tied = build_model(cfg(), task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD)
        assert isinstance(tied, cls)
        assert tied.lm_head.weight is tied.trunk.tok_emb.weight
        assert tied.lm_head.weight.data_ptr() == tied.trunk.tok_emb.weight.data_ptr()
        n_tied = sum(p.numel() for p in tied.parameters())
        untied = build_model(cfg(tie_embeddings=False), task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD)
        assert untied.lm_head.weight.data_ptr() != untied.trunk.tok_emb.weight.data_ptr()
        assert sum(p.numel() for p in untied.parameters()) == n_tied + V * 16 + V  # untied head has a bias
        assert tied.lm_head.bias is None and untied.lm_head.bias is not None
    assert isinstance(
        build_model(cfg(), task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD), SequenceClassifier
    )


def test_build_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a = build_model(cfg(attention="performer"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model(cfg(attention="performer"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=1)
    c = build_model(cfg(attention="performer"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["trunk.blocks.0.attn.omega"], sc["trunk.blocks.0.attn.omega"])
    assert not torch.equal(sa["trunk.blocks.0.attn.omega"], sa["trunk.blocks.1.attn.omega"])  # per layer


def test_state_dict_round_trip_with_random_buffers():
    a = build_model(
        cfg(attention="slay-nystrom"), task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=1
    )
    b = build_model(
        cfg(attention="slay-nystrom"), task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=2
    )
    x = ids()
    a.eval(), b.eval()
    assert not torch.allclose(a(x).logits, b(x).logits)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    torch.testing.assert_close(a(x).logits, b(x).logits, rtol=0, atol=0)


def test_bad_inputs_raise_lm_errors():
    with pytest.raises(LmError, match="pad_id"):
        build_model(cfg(), task="mlm", vocab_size=V, max_len=MAXLEN, pad_id=V)
    unvalidated = cfg().model_copy(update={"attention_options": {"nope": 1}})  # skips pydantic validation
    with pytest.raises(LmError, match=r"model\.attention_options\.nope"):
        build_model(unvalidated, task="mlm", vocab_size=V, max_len=MAXLEN, pad_id=PAD)
    model = build_model(cfg(), task="classify", vocab_size=V, max_len=MAXLEN, pad_id=PAD)
    with pytest.raises(LmError, match="attention_mask shape"):
        model(ids(L=6), torch.ones(2, 5))
    with pytest.raises(LmError, match="max_len"):
        model(ids(L=MAXLEN + 1))
    with pytest.raises(LmError, match="task"):
        build_model(cfg(), task="seq2seq", vocab_size=V, max_len=MAXLEN, pad_id=PAD)


# ---- a tiny model can overfit a tiny batch ----------------------------------------------------------------


def _train(model, loss_fn, steps=50, lr=1e-2):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("task", ["classify", "mlm", "clm"])
def test_tiny_model_overfits_a_tiny_batch(task):
    c = cfg(d_model=32, n_heads=4, d_ff=64, n_layers=2, attention="rotary" if task == "clm" else "standard")
    model = build_model(c, task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=0).train()
    x = ids(B=8, L=12, seed=1)
    if task == "classify":
        y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.float)

        def loss_fn(m):
            return F.binary_cross_entropy_with_logits(m(x).logits, y)
    elif task == "mlm":
        masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.25
        inp = x.masked_fill(masked, V - 1)  # V-1 plays the mask token

        def loss_fn(m):
            return F.cross_entropy(m(inp).logits[masked], x[masked])
    else:

        def loss_fn(m):
            return F.cross_entropy(m(x[:, :-1]).logits.reshape(-1, V), x[:, 1:].reshape(-1))

    losses = _train(model, loss_fn)
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_cached_decoding_accepts_a_mask_over_past_and_new_tokens():
    model = build_model(cfg(attention="rotary"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD).eval()
    x = ids(L=8)
    mask = torch.ones_like(x)
    mask[0, 2] = 0  # a padded key inside the prompt
    with torch.no_grad():
        full = model(x, mask).logits[:, -1]
        prefix = model.decode(x[:, :7], mask[:, :7])
        new_only = model.decode(x[:, 7:], mask[:, 7:], cache=prefix.cache).logits[:, -1]
        past_and_new = model.decode(x[:, 7:], mask, cache=prefix.cache).logits[:, -1]
    torch.testing.assert_close(new_only, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(past_and_new, full, atol=1e-5, rtol=1e-5)


# ---- bias, norm_eps, gradient checkpointing ---------------------------------------------------------------


def _count_biases(model):
    return {name for name, p in model.named_parameters() if name.endswith(".bias")}


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_bias_switch_reaches_every_linear_and_layernorm(norm):
    """bias=True: every nn.Linear and LayerNorm has a bias (the tied LM head excepted); bias=False: none."""
    for task in ("classify", "mlm", "clm"):
        for tie in (True, False):
            on = build_model(
                cfg(norm=norm, tie_embeddings=tie), task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD
            )
            off = build_model(
                cfg(norm=norm, tie_embeddings=tie, bias=False),
                task=task,
                vocab_size=V,
                max_len=MAXLEN,
                pad_id=PAD,
            )
            assert not _count_biases(off)
            for name, mod in on.named_modules():
                if isinstance(mod, (nn.Linear, LayerNorm)):
                    tied_head = name == "lm_head" and tie
                    assert (mod.bias is None) == tied_head, name
            n_linear = sum(isinstance(m, nn.Linear) for m in on.modules())
            n_ln = sum(isinstance(m, LayerNorm) for m in on.modules())
            assert len(_count_biases(on)) == n_linear + n_ln - (task != "classify" and tie)


def test_norm_eps_reaches_every_norm():
    for norm in ("layernorm", "rmsnorm"):
        model = build_model(
            cfg(norm=norm, norm_eps=3e-3), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD
        )
        eps = [m.eps for m in model.modules() if isinstance(m, (LayerNorm, RMSNorm))]
        assert len(eps) == 2 * 2 + 1 and set(eps) == {3e-3}


@pytest.mark.parametrize("task,kind", [("clm", "standard"), ("classify", "performer"), ("mlm", "slay")])
def test_gradient_checkpointing_gives_the_same_loss_and_grads(task, kind):
    """Recomputing the blocks in backward (dropout on: its RNG state is replayed) changes nothing."""
    results = []
    for ckpt in (False, True):
        c = cfg(attention=kind, dropout=0.2, attention_dropout=0.1, gradient_checkpointing=ckpt, n_layers=3)
        model = build_model(c, task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD, seed=4).train()
        assert model.trunk.gradient_checkpointing == ckpt
        x = ids(L=9)
        mask = torch.ones_like(x)
        mask[1, 6:] = 0
        torch.manual_seed(7)
        logits = model(x, mask).logits
        loss = logits.float().square().mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-7)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_really_recomputes():
    """With checkpointing, the blocks' forward runs again during backward (and not in eval / no_grad)."""
    c = cfg(gradient_checkpointing=True, n_layers=2)
    model = build_model(c, task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD).train()
    calls = []
    for block in model.trunk.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))
    model(ids()).logits.sum().backward()
    assert len(calls) == 4  # 2 blocks forward + 2 recomputed in backward
    calls.clear()
    with torch.no_grad():
        model(ids())
    assert len(calls) == 2
