"""The common attention base: fused q/k/v projection, head split, RoPE, a kind-specific core, head merge,
output projection; and the two cores every kind is built from.

* Exact (quadratic) core: scores S_ij = f(q_i, k_j), then softmax or kernel normalisation S / (S1 + eps).
* Linear (feature-map) core (Katharopoulos et al. 2020): out_i = phi(q_i)^T S / stab(phi(q_i)^T z) with
  S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) -- global sums (bidirectional) or prefix sums (causal).

Masking (docs/attention.md §1.3): the exact core fills disallowed scores with finfo.min (softmax) or 0
(kernel); the linear core zeroes phi(k_j) and v_j of padded keys before the sums. Cores run with autocast off
in the model's compute dtype (lm.model.precision): float32 for half-precision q, k, v (as under autocast),
float64 for a float64 model; kinds cast their buffers to the dtype of q and k at use (`model.half()` rounds
them).

Two entry points: `forward(x, p)` for training and evaluation, where `p` (a `Pass`) holds what the whole
call asks (key mask, causal, offset, return_attention), and `decode(x, p, state)` for cached decoding, which
carries an `ExactState` (past k, v, key mask) or a `LinearState` (S, z) from one call to the next.

Fused softmax core: a kind whose scores are q.k / sqrt(d) (standard, rotary) sets `fused`, and unless the
attention weights are asked for (return_attention, for the maps of `lm viz`) its core is one call of
F.scaled_dot_product_attention: the same finfo.min additive mask (or is_causal when there is nothing else to
mask), the same dropout probability, and no L x L matrix kept (flash / memory-efficient kernels, on CPU too).
On CUDA it runs in the autocast dtype (bf16/fp16 tensor cores; the kernels keep the softmax statistics in
float32); on CPU in the dtype above. The explicit path stays the reference it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm.attention_kinds import AttentionOptions, LinearOptions
from lm.errors import LmError
from lm.model.dropout import Dropout
from lm.model.positions import RotaryEmbedding
from lm.model.precision import at_least_fp32


@dataclass(frozen=True)
class Pass:
    """What one forward call asks of every layer: built once by the trunk, handed unchanged to each block.

    key_mask: (B, L) bool on the model's device, True = real token (None: all real); in decoding it covers the
    new tokens only. causal: query i sees keys j <= i. offset: the position of the first token (how many are
    cached before it). return_attention: each layer also returns its weights (the maps of `lm viz`).
    """

    key_mask: Tensor | None = None
    causal: bool = False
    offset: int = 0
    return_attention: bool = False


@dataclass
class ExactState:
    """Cache of an exact kind: keys (after RoPE) and values of past tokens, and their key mask."""

    k: Tensor  # (B, H, T, d)
    v: Tensor  # (B, H, T, d)
    mask: Tensor  # (B, T) bool


@dataclass
class LinearState:
    """Cache of a linear kind: the running sums of the causal prefix."""

    S: Tensor  # (B, H, m, d)  sum_j phi(k_j) v_j^T
    z: Tensor  # (B, H, m)     sum_j phi(k_j)


State = ExactState | LinearState


@dataclass
class AttentionResult:
    out: Tensor  # (B, L, E)
    weights: Tensor | None  # (B, H, L, T) attention (or kernel-normalised equivalent) weights


class Attention(nn.Module):
    """Base of every kind. A kind declares what it is, `kind` (its `model.attention` name) and `Options` (its
    typed options model, lm.attention_kinds): the registry reads both, and a subclass defined anywhere keeps
    them. It implements `core` (training and evaluation) and `decode_core` (with a cache), usually through
    ExactAttention / LinearAttention. `self.opts` holds the layer's options, resolved by the model build."""

    kind: ClassVar[str]
    Options: ClassVar[type[AttentionOptions]] = AttentionOptions

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        attention_dropout: float = 0.0,
        max_len: int = 512,
        options: AttentionOptions,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise LmError(f"model.n_heads ({n_heads}) must divide model.d_model ({d_model})")
        # resolved once per model by lm.attention_kinds.resolve_attention_options, never here
        if type(options) is not self.Options:
            raise LmError(
                f"attention {self.kind!r} takes {self.Options.__name__}, got {type(options).__name__} "
                f"(resolve them with lm.attention_kinds.resolve_attention_options)"
            )
        self.opts = options
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.max_len = max_len
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)  # fused q, k, v (in that order)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.attn_drop = Dropout(attention_dropout)
        self.rope = RotaryEmbedding(self.head_dim, self.opts.rope_theta) if self.opts.use_rope else None
        self.init_buffers(generator if generator is not None else torch.Generator().manual_seed(0))

    def init_buffers(self, generator: torch.Generator) -> None:
        """Draw this kind's fixed random state (feature matrices, anchors, hashes) into persistent buffers.
        Called once at construction; the generator is not kept, so nothing can be redrawn later."""

    def forward(self, x: Tensor, p: Pass) -> AttentionResult:
        """x: (B, L, E) at positions p.offset.. -> out (B, L, E), and the weights when p.return_attention."""
        heads, weights = self.attend(x, p)
        return AttentionResult(self.merge(heads, x.dtype), weights)

    def attend(self, x: Tensor, p: Pass) -> tuple[Tensor, Tensor | None]:
        """Everything but the output projection: per-head outputs (B, H, L, d) in the core's dtype, and the
        weights. The classifier's CLS-only last block (lm/model/tasks.py) projects one row of them."""
        q, k, v, positions = self.heads(x, p.offset)
        dtype = self.core_dtype(q.dtype, x.device, p.return_attention)  # usually bf16 -> float32 (see above)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.core(q.to(dtype), k.to(dtype), v.to(dtype), p, positions)

    def decode(self, x: Tensor, p: Pass, state: State | None) -> tuple[Tensor, State]:
        """Cached decoding: x (B, L, E) are the tokens after the p.offset ones `state` holds (None: none yet)
        -> out (B, L, E) and the state grown by them. No weights: `lm viz` reads them from `forward`."""
        q, k, v, positions = self.heads(x, p.offset)
        dtype = self.core_dtype(q.dtype, x.device, False)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out, state = self.decode_core(q.to(dtype), k.to(dtype), v.to(dtype), p, positions, state)
        return self.merge(out, x.dtype), state

    def heads(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (B, L, E) -> q, k, v (B, H, L, d), RoPE applied, and their positions offset..offset+L-1."""
        B, L, E = x.shape
        H, d = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).split(E, dim=-1)
        q, k, v = (t.view(B, L, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
        positions = torch.arange(offset, offset + L, device=x.device)  # (L,)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        return q, k, v, positions

    def merge(self, heads: Tensor, dtype: torch.dtype) -> Tensor:
        """Per-head outputs (B, H, L, d) -> (B, L, E) in `dtype` (the model's), through the out projection."""
        B, H, L, d = heads.shape
        return self.proj(heads.to(dtype).transpose(1, 2).reshape(B, L, H * d))

    def core_dtype(self, dtype: torch.dtype, device: torch.device, return_attention: bool) -> torch.dtype:
        """The dtype q, k and v enter the core in: at least float32 (bf16 under autocast -> float32)."""
        return at_least_fp32(dtype)

    def core(
        self, q: Tensor, k: Tensor, v: Tensor, p: Pass, positions: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """q, k, v: (B, H, L, d) -> per-head outputs (B, H, L, d), and the weights if p.return_attention."""
        raise NotImplementedError

    def decode_core(
        self, q: Tensor, k: Tensor, v: Tensor, p: Pass, positions: Tensor, state: State | None
    ) -> tuple[Tensor, State]:
        """`core` for the new tokens after the cached ones: per-head outputs and the grown state."""
        raise NotImplementedError


def allowed_keys(
    key_mask: Tensor | None, causal: bool, n_queries: int, n_keys: int, device: torch.device
) -> Tensor | None:
    """(B or 1, 1, Lq, Lk) bool: key j visible to query i (queries are the last Lq of the Lk positions)."""
    allowed = None
    if causal:
        qi = torch.arange(n_keys - n_queries, n_keys, device=device)[:, None]  # absolute query positions
        allowed = (torch.arange(n_keys, device=device)[None, :] <= qi)[None, None]  # (1, 1, Lq, Lk)
    if key_mask is not None:
        km = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        allowed = km if allowed is None else allowed & km
    return allowed


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """0 where `allowed`, finfo.min elsewhere, in `dtype` and allowed's (broadcast) shape: added to the
    scores, exp() gives exactly 0 for a masked key, and a row with no allowed key stays finite (uniform
    weights)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


class ExactAttention(Attention):
    """Quadratic core over an explicit score matrix; subclasses define `scores` and `normalization`.
    A subclass whose scores are q.k / sqrt(d) with softmax sets `fused`: see `fused_core`."""

    normalization: str = "softmax"  # or "kernel": S / (sum_j S + eps)
    fused: bool = False  # scores = q.k / sqrt(d): F.scaled_dot_product_attention computes the same core

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """q: (B, H, Lq, d), k: (B, H, Lk, d) -> (B, H, Lq, Lk) scores in q's dtype, a fresh tensor that no
        autograd node saved: the core masks it in place (one pass over the L x L matrix fewer)."""
        raise NotImplementedError

    def kernel_eps(self) -> float:
        return 1e-6

    def core_dtype(self, dtype: torch.dtype, device: torch.device, return_attention: bool) -> torch.dtype:
        if self.fused and not return_attention and device.type == "cuda":
            return dtype  # the autocast dtype: SDPA's CUDA kernels keep the softmax statistics in float32
        return super().core_dtype(dtype, device, return_attention)

    def fused_core(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool) -> Tensor:
        """softmax(q k^T / sqrt(d) + mask) v by F.scaled_dot_product_attention, masked as the explicit path
        (finfo.min where a key is not allowed) and with the same dropout probability on the weights.
        q: (B, H, Lq, d), k, v: (B, H, Lk, d) -> (B, H, Lq, d).

        A query row with no allowed key (every key it may see is padding) gets the explicit path's output, the
        mean of the values. Gradients equal the explicit path's for every loss lm computes; only a loss that
        reads such a padding row differs (CPU's flash backward sends finite but different gradients through
        it)."""
        Lq, Lk = q.shape[2], k.shape[2]
        p = self.attn_drop.p if self.training else 0.0
        if causal and key_mask is None and Lq == Lk:  # the triangle alone: no mask tensor at all
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        allowed = allowed_keys(key_mask, causal, Lq, Lk, q.device)  # (B or 1, 1, Lq or 1, Lk) or None
        mask = None if allowed is None else additive_mask(allowed, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def core(self, q, k, v, p, positions):
        return self.exact_core(q, k, v, p.key_mask, p.causal, p.return_attention)

    def decode_core(self, q, k, v, p, positions, state):
        """The cached keys and values go before the new ones (queries are the last L of the T keys); the new
        state holds them all, with their key mask."""
        B, _, L, _ = q.shape
        key_mask = p.key_mask
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], dim=2)
            v = torch.cat([state.v.to(v.dtype), v], dim=2)
            new_mask = (
                key_mask if key_mask is not None else torch.ones(B, L, dtype=torch.bool, device=q.device)
            )
            key_mask = torch.cat([state.mask, new_mask], dim=1)  # (B, T)
        mask_all = (
            key_mask if key_mask is not None else torch.ones(B, k.shape[2], dtype=torch.bool, device=q.device)
        )
        out, _ = self.exact_core(q, k, v, key_mask, p.causal, False)
        return out, ExactState(k=k, v=v, mask=mask_all)

    def exact_core(
        self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool, return_attention: bool
    ) -> tuple[Tensor, Tensor | None]:
        """q: (B, H, L, d), k, v: (B, H, T, d), key_mask: (B, T) -> out (B, H, L, d), weights (B, H, L, T)."""
        if self.fused and not return_attention:
            return self.fused_core(q, k, v, key_mask, causal), None
        L = q.shape[2]
        s = self.scores(q, k)  # (B, H, L, T)
        allowed = allowed_keys(key_mask, causal, L, k.shape[2], q.device)  # (B or 1, 1, L, T) bool
        # masks are applied in place through a small broadcast float tensor: an add / mul over the L x L
        # scores is several times faster on CPU than a broadcast masked_fill
        if self.normalization == "softmax":
            if allowed is not None:  # + finfo.min: exp() gives exactly 0, a fully masked row stays uniform
                s.add_(additive_mask(allowed, s.dtype))
            w = torch.softmax(s, dim=-1)
        else:
            if allowed is not None:
                s.mul_(allowed.to(s.dtype))
            w = s / (s.sum(-1, keepdim=True) + self.kernel_eps())
        out = self.attn_drop(w) @ v  # (B, H, L, d)
        return out, (w if return_attention else None)


# ---- linear core -------------------------------------------------------------------------------------


def linear_bidirectional(phi_q: Tensor, phi_k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Global sums: num = phi(Q) (phi(K)^T V), den = phi(Q) (phi(K)^T 1). phi: (B,H,L,m), v: (B,H,L,d)."""
    S = phi_k.transpose(-1, -2) @ v  # (B, H, m, d)
    z = phi_k.sum(-2)  # (B, H, m)
    return phi_q @ S, (phi_q * z[..., None, :]).sum(-1)


def linear_causal_chunked(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, S0: Tensor, z0: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Causal prefix sums, chunk by chunk: inside a chunk the masked quadratic form, plus the state carried
    from earlier chunks (as Performer's `forward_chunked`). Returns num (B,H,L,d), den (B,H,L), S, z.
    The chunks come from `split` (one backward node that concatenates the chunk gradients): slicing each
    chunk separately would make backward scatter every chunk's gradient into a zero (B,H,L,m) tensor,
    quadratic in L."""
    S, z = S0, z0
    nums, dens = [], []
    c0 = min(chunk, phi_q.shape[2])
    above = torch.ones(c0, c0, dtype=torch.bool, device=phi_q.device).triu(1)  # (c, c) future keys
    for qc, kc, vc in zip(phi_q.split(chunk, dim=2), phi_k.split(chunk, dim=2), v.split(chunk, dim=2)):
        c = qc.shape[2]
        a = (qc @ kc.transpose(-1, -2)).masked_fill(above[:c, :c], 0.0)  # (B, H, c, c)
        nums.append(qc @ S + a @ vc)
        dens.append((qc * z[..., None, :]).sum(-1) + a.sum(-1))
        S = S + kc.transpose(-1, -2) @ vc
        z = z + kc.sum(-2)
    return torch.cat(nums, dim=2), torch.cat(dens, dim=2), S, z


def linear_quadratic(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, allowed: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The explicit form K = phi(Q) phi(K)^T (zeroed where not allowed): num = K V, den = K 1, and K."""
    K = phi_q @ phi_k.transpose(-1, -2)  # (B, H, Lq, Lk)
    if allowed is not None:
        K = K.masked_fill(~allowed, 0.0)
    return K @ v, K.sum(-1), K


class LinearAttention(Attention):
    """Feature-map core; subclasses define `features`. `stabilizer` is 'add' (den + eps) or 'clamp'."""

    Options = LinearOptions
    stabilizer: str = "add"

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        """u: (B, H, L, d) queries or keys (float32 or float64) at `positions` -> (B, H, L, m) features in u's
        dtype."""
        raise NotImplementedError

    def stabilize(self, den: Tensor) -> Tensor:
        eps = self.opts.eps
        return den + eps if self.stabilizer == "add" else den.clamp_min(eps)

    def core(self, q, k, v, p, positions):
        phi_q, phi_k, v = self.feature_maps(q, k, v, p, positions)
        if p.causal:
            num, den, _, _ = self.prefix_sums(phi_q, phi_k, v, None)
        else:
            num, den = linear_bidirectional(phi_q, phi_k, v)
        out = self.attn_drop(num / self.stabilize(den)[..., None])  # (B, H, L, d)
        if not p.return_attention:
            return out, None
        allowed = allowed_keys(p.key_mask, p.causal, q.shape[2], k.shape[2], q.device)
        _, den_q, K = linear_quadratic(phi_q, phi_k, v, allowed)
        return out, K / self.stabilize(den_q)[..., None]  # (B, H, L, L) kernel-normalised weights

    def decode_core(self, q, k, v, p, positions, state):
        """The prefix sums continue from the cached ones (S, z): the new state is where they end."""
        if not p.causal:
            raise LmError(f"attention {self.kind!r}: a cache needs causal attention")
        phi_q, phi_k, v = self.feature_maps(q, k, v, p, positions)
        num, den, S, z = self.prefix_sums(phi_q, phi_k, v, state)
        return self.attn_drop(num / self.stabilize(den)[..., None]), LinearState(S=S, z=z)

    def feature_maps(
        self, q: Tensor, k: Tensor, v: Tensor, p: Pass, positions: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """phi(q), phi(k) (B, H, L, m) and v, with padded keys' phi(k_j) and v_j zeroed (out of every sum)."""
        phi_q = self.features(q, positions, p.causal)  # (B, H, L, m)
        phi_k = self.features(k, positions, p.causal)
        if p.key_mask is not None:
            keep = p.key_mask[:, None, :, None].to(phi_k.dtype)  # (B, 1, L, 1)
            phi_k, v = phi_k * keep, v * keep
        return phi_q, phi_k, v

    def prefix_sums(
        self, phi_q: Tensor, phi_k: Tensor, v: Tensor, state: LinearState | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Causal num (B, H, L, d), den (B, H, L) and the final sums S, z, starting from `state` (None: 0)."""
        if state is None:
            B, H, _, m = phi_k.shape
            S0, z0 = phi_k.new_zeros(B, H, m, v.shape[-1]), phi_k.new_zeros(B, H, m)
        else:
            S0, z0 = state.S, state.z
        return linear_causal_chunked(phi_q, phi_k, v, S0, z0, self.opts.chunk_size)
