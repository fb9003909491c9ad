"""Models compute in the dtype they are in (lm.model.precision).

* bfloat16 / float16 models (`model.to(dtype)`) run every attention kind, norm and position scheme, with the
  norms, rotary angles, attention cores and loss computed in float32 and cast back.
* float64 models compute in float64 end to end: no float32 intermediate anywhere, results that differ from
  the float32 model, that equal float64 references (F.scaled_dot_product_attention, RoPE as complex
  multiplication, Hugging Face GPT-2) to 1e-12, and gradients that pass torch.autograd.gradcheck.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lm.attention_kinds import resolve_attention_options
from lm.config import ATTENTION_KINDS, ModelConfig
from lm.model import build_model, load_hf_checkpoint
from lm.model.attention import Pass, attention_class
from lm.model.block import Block
from lm.model.norms import LayerNorm, RMSNorm
from lm.model.positions import RotaryEmbedding

V, MAXLEN, PAD = 40, 24, 0
HALF = [torch.bfloat16, torch.float16]
EXACT = dict(atol=1e-12, rtol=1e-12)

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**kw) -> ModelConfig:
    base = dict(d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def ids(B=2, L=10, seed=0, vocab=V):
    return torch.randint(1, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


def padded(B=2, L=10):
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 7:] = 0
    return mask


def positions_options(positions: str) -> tuple[str, dict]:
    """'rotary' stands for no absolute positions and RoPE inside attention (any kind takes use_rope)."""
    return ("none", {"use_rope": True}) if positions == "rotary" else (positions, {})


def run_or_skip(fn, dtype):
    """Run fn(); skip the test where this CPU build has no float16 kernel for an op (reported by name)."""
    try:
        return fn()
    except RuntimeError as err:
        if dtype == torch.float16 and "not implemented for 'Half'" in str(err):
            pytest.skip(f"float16 on CPU: {err}")
        raise


class NonFloat64Ops(TorchFunctionMode):
    """Records every torch call whose result holds a floating tensor that is not float64."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64:
                self.seen.append(f"{getattr(func, '__name__', func)} -> {t.dtype}")
        return out


# ---- half precision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
def test_dtype_half_precision_norms_and_rope_compute_in_fp32(dtype):
    """A bf16/fp16 norm or RoPE equals the float32 computation on the same (rounded) weights and inputs,
    rounded once at the end: statistics are not taken in half precision."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 12, generator=g) * 3 + 1).to(dtype)
    for norm in (LayerNorm(12), LayerNorm(12, bias=False), RMSNorm(12)):
        with torch.no_grad():
            for p in norm.parameters():
                p.normal_(generator=g)
        half = copy.deepcopy(norm).to(dtype)
        ref = copy.deepcopy(half).float()  # the rounded weights, in float32
        out = run_or_skip(lambda: half(x), dtype)
        assert out.dtype == dtype and half.weight.dtype == dtype
        assert torch.equal(out, ref(x.float()).to(dtype))
    rope = RotaryEmbedding(12).to(dtype)
    pos = torch.arange(100, 105)  # large angles: a half-precision angle would be off by whole radians
    out = run_or_skip(lambda: rope(x, pos), dtype)
    assert out.dtype == dtype and torch.equal(out, RotaryEmbedding(12)(x.float(), pos).to(dtype))


HALF_COMBOS = list(
    itertools.product(["learned", "sinusoidal", "rotary"], ["layernorm", "rmsnorm"], ["pre", "post"])
)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_dtype_half_precision_models_run_every_kind(kind, dtype):
    """model.to(bf16/fp16) runs forward for classify, mlm and clm (and the LM loss) for every position
    scheme, norm and norm position: outputs in the model's dtype and finite, the loss in float32."""
    x, mask = ids(), padded()
    labels = ids(seed=1).masked_fill(mask == 0, -100)
    for positions, norm, norm_position in HALF_COMBOS:
        pos, opts = positions_options(positions)
        c = cfg(
            attention=kind,
            attention_options=opts,
            positions=pos,
            norm=norm,
            norm_position=norm_position,
            n_layers=1,
        )
        for task in ("classify", "mlm", "clm"):
            model = build_model(c, task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD).to(dtype).eval()
            with torch.no_grad():
                out = run_or_skip(lambda: model(x, mask), dtype)
                assert out.logits.dtype == dtype and torch.isfinite(out.logits).all(), (positions, norm, task)
                if task != "classify":
                    loss = run_or_skip(lambda: model(x, mask, labels=labels).loss, dtype)
                    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_dtype_half_precision_model_trains(dtype):
    """Backward through a half-precision model works and gives finite gradients in the model's dtype."""
    model = build_model(
        cfg(attention="rotary", norm="layernorm"), task="clm", vocab_size=V, max_len=MAXLEN, pad_id=PAD
    ).to(dtype)
    run_or_skip(lambda: model(ids(), padded(), labels=ids(seed=1)).loss.backward(), dtype)
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in model.parameters())


# ---- float64 end to end ------------------------------------------------------------------------------------

F64_CASES = [  # (task, positions, norm, norm_position): every scheme at least once
    ("classify", "rotary", "layernorm", "post"),
    ("mlm", "sinusoidal", "rmsnorm", "pre"),
    ("clm", "rotary", "layernorm", "pre"),
    ("clm", "learned", "rmsnorm", "post"),
]


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_dtype_float64_model_computes_in_float64(kind):
    """model.double() computes every op in float64 (no float32 tensor appears anywhere in forward, loss or
    KV-cache decoding), and its outputs differ from the float32 model's by more than float64 rounding."""
    x, mask = ids(), padded()
    labels = ids(seed=1).masked_fill(mask == 0, -100)
    for task, positions, norm, norm_position in F64_CASES:
        pos, opts = positions_options(positions)
        c = cfg(attention=kind, attention_options=opts, positions=pos, norm=norm, norm_position=norm_position)
        m32 = build_model(c, task=task, vocab_size=V, max_len=MAXLEN, pad_id=PAD).eval()
        m64 = copy.deepcopy(m32).double()
        with torch.no_grad(), NonFloat64Ops() as spy:
            out = m64(x, mask).logits
            loss = m64(x, mask, labels=labels).loss if task != "classify" else None
            if task == "clm":
                step = m64.decode(x[:, :6])
                step = m64.decode(x[:, 6:], cache=step.cache)
        assert spy.seen == [], (task, positions, sorted(set(spy.seen)))
        assert out.dtype == torch.float64
        with torch.no_grad():
            diff = (out - m32(x, mask).logits.double()).abs().max()
            assert diff > 1e-10, (task, float(diff))
            if loss is not None:
                assert loss.dtype == torch.float64
                assert (loss - m32(x, mask, labels=labels).loss.double()).abs() > 1e-10
            if task == "clm":  # the float64 cache reproduces the float64 full pass to float64 precision
                torch.testing.assert_close(step.logits, m64(x).logits[:, 6:], **EXACT)


def make_attention(kind: str, **options):
    torch.manual_seed(1234)
    return attention_class(kind)(
        d_model=16,
        n_heads=2,
        bias=True,
        max_len=MAXLEN,
        options=resolve_attention_options(kind, options),
        generator=torch.Generator().manual_seed(0),
    ).eval()


def rope_complex(t: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE as llama's complex multiplication of interleaved pairs, float64. t: (B, H, L, d)."""
    L, d = t.shape[-2:]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cis = torch.polar(
        torch.ones(L, d // 2, dtype=torch.float64), torch.arange(L, dtype=torch.float64)[:, None] * freqs
    )
    return torch.view_as_real(torch.view_as_complex(t.reshape(*t.shape[:-1], d // 2, 2)) * cis).flatten(-2)


@pytest.mark.parametrize("kind", ["standard", "rotary"])
@pytest.mark.parametrize("causal", [False, True])
def test_dtype_float64_attention_matches_sdpa(kind, causal):
    """A float64 standard / rotary attention layer equals float64 F.scaled_dot_product_attention (on
    complex-rotated q, k for rotary) to 1e-12, with a padding mask; the float32 layer does not."""
    attn = make_attention(kind).double()
    x = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    key_mask = padded().bool()
    with torch.no_grad():
        out = attn(x, Pass(key_mask=key_mask, causal=causal)).out
        q, k, v = (t.view(2, 10, 2, 8).transpose(1, 2) for t in attn.qkv(x).split(16, dim=-1))
        if kind == "rotary":
            q, k = rope_complex(q), rope_complex(k)
        allowed = key_mask[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(10, 10, dtype=torch.bool).tril()
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, H, L, d), float64
        ref = attn.proj(ref.transpose(1, 2).reshape(2, 10, 16))
        out32 = make_attention(kind)(x.float(), Pass(key_mask=key_mask, causal=causal)).out
    rows = key_mask if causal else slice(None)  # a fully masked causal row (padding) is don't-care
    torch.testing.assert_close(out[rows], ref[rows], **EXACT)
    assert (out32.double() - ref)[rows].abs().max() > 1e-10


def test_dtype_float64_gpt2_matches_hugging_face(tmp_path):
    """A Hugging Face GPT-2 converted by load_hf_checkpoint, both cast to float64, give the same logits to
    1e-12 (plain, padded, and through lm's KV cache); lm in float32 is 1e-10 or more away."""
    from test_hf_parity import gpt2, right_padded
    from test_hf_parity import ids as hf_ids

    hf = gpt2(tmp_path, seed=5)
    lm, _ = load_hf_checkpoint(tmp_path)
    lm32, hf, lm = copy.deepcopy(lm), hf.double(), lm.double()
    x, mask = hf_ids(), right_padded()
    with torch.no_grad():
        ref = hf(input_ids=x).logits
        assert ref.dtype == torch.float64 and ref.abs().max() > 1.0
        torch.testing.assert_close(lm(x).logits, ref, **EXACT)
        assert (lm32(x).logits.double() - ref).abs().max() > 1e-10
        keep = mask.bool()
        torch.testing.assert_close(
            lm(x, mask).logits[keep], hf(input_ids=x, attention_mask=mask).logits[keep], **EXACT
        )
        step = lm.decode(x[:, :4])
        logits = [step.logits]
        for t in range(4, x.shape[1]):
            step = lm.decode(x[:, t : t + 1], cache=step.cache)
            logits.append(step.logits)
        torch.testing.assert_close(torch.cat(logits, 1), ref, **EXACT)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_dtype_float64_gradcheck_block(kind):
    """torch.autograd.gradcheck of a float64 block of every kind with respect to its input: pre-norm
    LayerNorm with RoPE, causal; post-norm RMSNorm, bidirectional with padding."""
    mask = padded(B=2, L=5).bool()
    for norm, norm_position, causal in (("layernorm", "pre", True), ("rmsnorm", "post", False)):
        c = cfg(
            d_model=8,
            d_ff=16,
            attention=kind,
            attention_options={"use_rope": True} if causal else {},
            norm=norm,
            norm_position=norm_position,
        )
        torch.manual_seed(0)
        options = resolve_attention_options(c.attention, c.attention_options)
        block = Block(
            c, max_len=MAXLEN, generator=torch.Generator().manual_seed(0), attention_options=options
        )
        block = block.double().eval()
        x = torch.randn(
            2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True
        )
        key_mask = None if causal else mask
        assert torch.autograd.gradcheck(lambda t: block(t, Pass(key_mask=key_mask, causal=causal))[0], (x,))


@pytest.mark.parametrize("task", ["classify", "mlm", "clm"])
def test_dtype_float64_gradcheck_whole_model(task):
    """gradcheck of a tiny float64 model with respect to every parameter: the classifier's logits, the
    LMs' chunked loss (lm_loss.py's hand-written backward) on a padded batch."""
    c = cfg(
        d_model=8,
        n_layers=1,
        d_ff=16,
        attention="rotary",
        positions="sinusoidal",
        norm="layernorm",
        tie_embeddings=task == "mlm",
    )
    model = build_model(c, task=task, vocab_size=11, max_len=8, pad_id=PAD).double().eval()
    x, mask = ids(L=6, vocab=11), padded(L=6)
    labels = ids(L=6, seed=1, vocab=11).masked_fill(mask == 0, -100)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def f(*ps):
        kw = {} if task == "classify" else {"labels": labels}
        out = functional_call(model, dict(zip(names, ps)), (x, mask), kw)
        return out.logits if task == "classify" else out.loss

    assert torch.autograd.gradcheck(f, params)
