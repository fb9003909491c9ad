"""The common attention base: fused q/k/v projection, head split, RoPE, a kind-specific core, head merge,
output projection; and the two cores every kind is built from.

* Exact (quadratic) core: scores S_ij = f(q_i, k_j), then softmax or kernel normalisation S / (S1 + eps).
* Linear (feature-map) core (Katharopoulos et al. 2020): out_i = phi(q_i)^T S / stab(phi(q_i)^T z) with
  S = sum_j phi(k_j) v_j^T and z = sum_j phi(k_j) -- global sums (bidirectional) or prefix sums (causal).

Masking (docs/attention.md §1.3): the exact core fills disallowed scores with finfo.min (softmax) or 0 (kernel);
the linear core zeroes phi(k_j) and v_j of padded keys before the sums. Cores run with autocast off in the
model's compute dtype (lm.model.precision): float32 for half-precision q, k, v (as under autocast), float64
for a float64 model; kinds cast their buffers to the dtype of q and k at use (`model.half()` rounds them).
Incremental decoding carries an `ExactState` (past k, v, key mask) or a `LinearState` (S, z).

Fused softmax core: a kind whose scores are q.k / sqrt(d) (standard, rotary) sets `fused`, and unless the
attention weights are asked for (return_attention, for the maps of `lm viz`) its core is one call of
F.scaled_dot_product_attention: the same finfo.min additive mask (or is_causal when there is nothing else to
mask), the same dropout probability, and no L x L matrix kept (flash / memory-efficient kernels, on CPU too).
On CUDA it runs in the autocast dtype (bf16/fp16 tensor cores; the kernels keep the softmax statistics in
float32); on CPU in the dtype above. The explicit path stays the reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm.attention_kinds import AttentionOptions, kind_of, resolve_attention_options
from lm.errors import LmError
from lm.model.dropout import Dropout
from lm.model.positions import RotaryEmbedding
from lm.model.precision import at_least_fp32


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


@dataclass
class AttentionResult:
    out: Tensor  # (B, L, E)
    weights: Tensor | None  # (B, H, L, T) attention (or kernel-normalised equivalent) weights
    state: ExactState | LinearState | None


class Attention(nn.Module):
    """Base of every kind. Subclasses implement `core` (usually through ExactAttention/LinearAttention).
    `self.opts` holds the kind's typed options (lm.attention_kinds: declared there with the list of kinds)."""

    @property
    def kind(self) -> str:
        """This class's `model.attention` name (lm.attention_kinds.KINDS)."""
        return kind_of(
            f"{type(self).__module__.removeprefix('lm.model.attention.')}.{type(self).__qualname__}"
        )

    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        bias: bool = True,
        attention_dropout: float = 0.0,
        max_len: int = 512,
        options: AttentionOptions | Mapping[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise LmError(f"model.n_heads ({n_heads}) must divide model.d_model ({d_model})")
        # options come resolved from the model build; a dict (a layer built on its own) is validated here
        self.opts = (
            options
            if isinstance(options, AttentionOptions)
            else resolve_attention_options(self.kind, options)
        )
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

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None = None,
        causal: bool = False,
        state: ExactState | LinearState | None = None,
        offset: int = 0,
        use_cache: bool = False,
        return_attention: bool = False,
        rows: slice | None = None,
    ) -> AttentionResult:
        """x: (B, L, E) for positions offset..offset+L-1; key_mask: (B, L) bool, True = real token.
        rows: only these query positions are wanted: the output projection runs on them alone."""
        B, L, E = x.shape
        H, d = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).split(E, dim=-1)
        q, k, v = (t.view(B, L, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d)
        positions = torch.arange(offset, offset + L, device=x.device)  # (L,)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        if key_mask is not None:
            key_mask = key_mask.to(device=x.device, dtype=torch.bool)
        dtype = self.core_dtype(q.dtype, x.device, return_attention)  # usually bf16 -> float32 (see above)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out, weights, new_state = self.core(
                q.to(dtype),
                k.to(dtype),
                v.to(dtype),
                key_mask=key_mask,
                causal=causal,
                positions=positions,
                state=state,
                use_cache=use_cache,
                return_attention=return_attention,
            )  # out: (B, H, L, d)
        if rows is not None:
            out = out[:, :, rows]
        out = out.to(x.dtype).transpose(1, 2).reshape(B, out.shape[2], E)
        return AttentionResult(self.proj(out), weights, new_state)

    def core_dtype(self, dtype: torch.dtype, device: torch.device, return_attention: bool) -> torch.dtype:
        """The dtype q, k and v enter the core in: at least float32 (bf16 under autocast -> float32)."""
        return at_least_fp32(dtype)

    def core(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        key_mask: Tensor | None,
        causal: bool,
        positions: Tensor,
        state: Any,
        use_cache: bool,
        return_attention: bool,
    ) -> tuple[Tensor, Tensor | None, Any]:
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
    """0 where `allowed`, finfo.min elsewhere, in `dtype` and allowed's (broadcast) shape: added to the scores,
    exp() gives exactly 0 for a masked key, and a row with no allowed key stays finite (uniform weights)."""
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

    def core(self, q, k, v, *, key_mask, causal, positions, state, use_cache, return_attention):
        B, _, L, _ = q.shape
        if state is not None:
            k = torch.cat([state.k.to(k.dtype), k], dim=2)
            v = torch.cat([state.v.to(v.dtype), v], dim=2)
            new_mask = (
                key_mask if key_mask is not None else torch.ones(B, L, dtype=torch.bool, device=q.device)
            )
            key_mask = torch.cat([state.mask, new_mask], dim=1)  # (B, T)
        new_state = None
        if use_cache:
            mask_all = (
                key_mask
                if key_mask is not None
                else torch.ones(B, k.shape[2], dtype=torch.bool, device=q.device)
            )
            new_state = ExactState(k=k, v=v, mask=mask_all)
        if self.fused and not return_attention:
            return self.fused_core(q, k, v, key_mask, causal), None, new_state
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
        return out, (w if return_attention else None), new_state


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
    """The explicit form K = phi(Q) phi(K)^T (zeroed where not allowed): num = K V, den = K 1; returns K too."""
    K = phi_q @ phi_k.transpose(-1, -2)  # (B, H, Lq, Lk)
    if allowed is not None:
        K = K.masked_fill(~allowed, 0.0)
    return K @ v, K.sum(-1), K


class LinearAttention(Attention):
    """Feature-map core; subclasses define `features`. `stabilizer` is 'add' (den + eps) or 'clamp'."""

    stabilizer: str = "add"

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        """u: (B, H, L, d) queries or keys (float32 or float64) at `positions` -> (B, H, L, m) features in u's
        dtype."""
        raise NotImplementedError

    def stabilize(self, den: Tensor) -> Tensor:
        eps = self.opts.eps
        return den + eps if self.stabilizer == "add" else den.clamp_min(eps)

    def core(self, q, k, v, *, key_mask, causal, positions, state, use_cache, return_attention):
        phi_q = self.features(q, positions, causal)  # (B, H, L, m)
        phi_k = self.features(k, positions, causal)
        if key_mask is not None:
            keep = key_mask[:, None, :, None].to(phi_k.dtype)  # (B, 1, L, 1)
            phi_k, v = phi_k * keep, v * keep
        new_state = None
        if not causal:
            if state is not None or use_cache:
                raise LmError(f"attention {self.kind!r}: a cache needs causal attention")
            num, den = linear_bidirectional(phi_q, phi_k, v)
        else:
            B, H, _, m = phi_k.shape
            if state is None:
                S0 = phi_k.new_zeros(B, H, m, v.shape[-1])
                z0 = phi_k.new_zeros(B, H, m)
            else:
                S0, z0 = state.S, state.z
            num, den, S, z = linear_causal_chunked(phi_q, phi_k, v, S0, z0, self.opts.chunk_size)
            if use_cache:
                new_state = LinearState(S=S, z=z)
        out = self.attn_drop(num / self.stabilize(den)[..., None])  # (B, H, L, d)
        weights = None
        if return_attention:
            if state is not None:
                raise LmError(f"attention {self.kind!r}: return_attention is not available with a cache")
            allowed = allowed_keys(key_mask, causal, q.shape[2], k.shape[2], q.device)
            _, den_q, K = linear_quadratic(phi_q, phi_k, v, allowed)
            weights = K / self.stabilize(den_q)[..., None]  # (B, H, L, L) kernel-normalised weights
        return out, weights, new_state
