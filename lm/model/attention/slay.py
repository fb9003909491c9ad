"""SLAY: spherical Yat attention linearised (mlnomadpy/slay, `slay.tex`; docs/attention.md §3.9-3.15).

Target kernel on unit vectors q^, k^ with x = q^.k^ and C = 2 + epsilon:
    k_sph(x) = x^2 / (C - 2x) = int_0^inf e^{-sC} x^2 e^{2sx} ds                       (Bernstein / Laplace)
             ~ sum_r w_r x^2 e^{2 s_r x},  s_r = t_r / C, w_r = alpha_r / C      (Gauss-Laguerre, R nodes)
e^{2sx} is estimated with positive random features (Performer PRF, one N(0, I) matrix per node and head):
    phi_prf(u; s)_i = exp(clip(sqrt(2s) w_i.u - s, -clip, clip)) / sqrt(M)
and x^2 with a polynomial map phi_poly; the two are fused per node, Psi_r = sqrt(w_r) fuse(phi_poly, phi_prf),
Psi = concat_r Psi_r, and the linear core normalises by the kernel (denominator clamped from below at eps).

Kinds (fusion / polynomial map):
    slay          Hadamard product with a shared projection (proj^2/sqrt M) * PRF(proj)     M=32 R=2
    slay-tensor   TensorSketch (Pham & Pagh 2013) (x) PRF                                  M=8 R=1 P=16
    slay-laplace  PRF only, weights alpha_r C/4: approximates k_sph + C/4 + x/2             M=32 R=2
    slay-rm       Random Maclaurin (Kar & Karnick 2012) (x) PRF                            M=8 R=1 P=16
    slay-nystrom  Nystrom (Williams & Seeger 2001) with random unit anchors (x) PRF        M=8 R=1 P=16
    slay-anchor   anchor features (a_p.u)^2 (x) PRF                                        M=8 R=1 P=16
Random state is drawn once from the model's generator into buffers; anchors, hashes and RM vectors are
shared across heads, omega is per node and per head. Buffers are cast to the dtype of q and k at use (the
core's compute dtype); the quadrature nodes and weights are kept in float64, so a float64 model is exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from lm.attention_kinds import SlayNystromOptions, SlayOptions, SlayPolyOptions, SlayWideOptions
from lm.model.attention.base import LinearAttention
from lm.model.attention.yat import unit


def laguerre_nodes(R: int) -> tuple[Tensor, Tensor]:
    """Gauss-Laguerre nodes t_r and weights alpha_r (numpy laggauss):
    int_0^inf e^-t f(t) dt ~ sum alpha_r f(t_r)."""
    t, a = np.polynomial.laguerre.laggauss(R)
    return torch.from_numpy(t), torch.from_numpy(a)


def unit_anchors(P: int, d: int, generator: torch.Generator) -> Tensor:
    """(P, d) unit-normalised N(0, I) draws: random anchors, not data-dependent."""
    a = torch.randn(P, d, generator=generator)
    return a / a.norm(dim=-1, keepdim=True)


class SlayBase(LinearAttention):
    Options = SlayOptions
    stabilizer = "clamp"

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        R, M, H, d = self.opts.num_quadrature_nodes, self.opts.num_features, self.n_heads, self.head_dim
        C = 2.0 + self.opts.epsilon
        t, alpha = laguerre_nodes(R)
        self.register_buffer("nodes", t / C, persistent=False)  # (R,) s_r, float64
        self.register_buffer(
            "node_weights", self.quadrature_weights(alpha, C), persistent=False
        )  # (R,) float64
        self.register_buffer("omega", torch.randn(R, H, d, M, generator=generator))  # (R, H, d, M)

    @staticmethod
    def quadrature_weights(alpha: Tensor, C: float) -> Tensor:
        return alpha / C

    def projection(self, u_hat: Tensor, r: int) -> Tensor:
        """(B, H, L, d) -> (B, H, L, M): omega_{r,h,i} . u."""
        return u_hat @ self.omega[r].to(u_hat.dtype)[None]

    def prf(self, proj: Tensor, r: int) -> Tensor:
        """Positive random features of e^{2 s_r x} from a projection of unit vectors."""
        s = self.nodes[r].to(proj.dtype)
        c = self.opts.clip
        return torch.exp((torch.sqrt(2 * s) * proj - s).clamp(-c, c)) / math.sqrt(proj.shape[-1])

    def poly(self, u_hat: Tensor) -> Tensor:
        """(B, H, L, d) -> (B, H, L, P) polynomial features of x^2 (tensor-fusion kinds)."""
        raise NotImplementedError

    def node_scale(self, r: int, like: Tensor) -> Tensor:
        """sqrt(w_r) in the dtype of `like`."""
        return torch.sqrt(self.node_weights[r]).to(like.dtype)

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        u_hat = unit(u)
        poly = self.poly(u_hat)  # (B, H, L, P)
        parts = []
        for r in range(self.nodes.numel()):
            prf = self.prf(self.projection(u_hat, r), r)  # (B, H, L, M)
            parts.append(self.node_scale(r, prf) * (poly[..., :, None] * prf[..., None, :]).flatten(-2))
        return torch.cat(parts, dim=-1)  # (B, H, L, R*P*M)


class SlayHadamardAttention(SlayBase):
    """Hadamard fusion with a shared projection: Psi_r = sqrt(w_r) (proj^2 / sqrt M) * PRF(proj). All > 0.
    It estimates a different kernel than x^2 e^{2sx} (docs/attention.md §3.10); kept as the fast baseline."""

    kind = "slay"
    Options = SlayWideOptions

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        u_hat = unit(u)
        parts = []
        for r in range(self.nodes.numel()):
            proj = self.projection(u_hat, r)  # (B, H, L, M), shared by both factors
            poly = proj.pow(2) / math.sqrt(proj.shape[-1])
            parts.append(self.node_scale(r, proj) * poly * self.prf(proj, r))
        return torch.cat(parts, dim=-1)  # (B, H, L, R*M)


class SlayLaplaceAttention(SlayBase):
    """No polynomial factor: Psi = concat_r sqrt(alpha_r C / 4) PRF_r; sum_r w'_r e^{2 s_r x} approximates
    (C^2/4) / (C - 2x) = x^2/(C - 2x) + C/4 + x/2 (paper App. "On pure Laplace forms"). All > 0."""

    kind = "slay-laplace"
    Options = SlayWideOptions

    @staticmethod
    def quadrature_weights(alpha: Tensor, C: float) -> Tensor:
        return alpha * C / 4

    def features(self, u: Tensor, positions: Tensor, causal: bool) -> Tensor:
        u_hat = unit(u)
        parts = [
            self.node_scale(r, u_hat) * self.prf(self.projection(u_hat, r), r)
            for r in range(self.nodes.numel())
        ]
        return torch.cat(parts, dim=-1)  # (B, H, L, R*M)


class SlayTensorAttention(SlayBase):
    """TensorSketch of u (x) u: TS(u) = irfft(rfft(CS1 u) * rfft(CS2 u), n=P) / sqrt(P), two independent
    CountSketches (hash h_j: d -> P, sign s_j in {+-1}); E<TS(x), TS(y)> = (x.y)^2 / P. Signed."""

    kind = "slay-tensor"
    Options = SlayPolyOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        d, P = self.head_dim, self.opts.poly_dim
        sketches = []
        for _ in range(2):
            h = torch.randint(0, P, (d,), generator=generator)
            sign = torch.randint(0, 2, (d,), generator=generator).float() * 2 - 1
            sketches.append(torch.nn.functional.one_hot(h, P).float() * sign[:, None])  # (d, P)
        self.register_buffer("sketch", torch.stack(sketches))  # (2, d, P) CountSketch matrices

    def poly(self, u_hat: Tensor) -> Tensor:
        sketch = self.sketch.to(u_hat.dtype)
        P = sketch.shape[-1]
        c1, c2 = u_hat @ sketch[0], u_hat @ sketch[1]  # (B, H, L, P) CountSketches
        return torch.fft.irfft(torch.fft.rfft(c1, n=P) * torch.fft.rfft(c2, n=P), n=P) / math.sqrt(P)


class SlayRandomMaclaurinAttention(SlayBase):
    """Random Maclaurin degree 2: phi(u) = (r1 u) * (r2 u) / sqrt(P), r entries N(0, 1/d);
    E<phi(x), phi(y)> = (x.y)^2 / d^2. Signed, unbiased, high variance."""

    kind = "slay-rm"
    Options = SlayPolyOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        d, P = self.head_dim, self.opts.poly_dim
        self.register_buffer("rm", torch.randn(2, P, d, generator=generator) / math.sqrt(d))  # (2, P, d)

    def poly(self, u_hat: Tensor) -> Tensor:
        rm = self.rm.to(u_hat.dtype)
        return (u_hat @ rm[0].T) * (u_hat @ rm[1].T) / math.sqrt(rm.shape[1])


class SlayNystromAttention(SlayBase):
    """Nystrom map of (x.y)^2 with random unit anchors A: phi(u) = [(a_p.u)^2]_p W / sqrt(P),
    W = (K_AA)^{-1/2}, K_AA = (A A^T)^{o2} + lambda I (eigenvalues clamped >= 1e-6). Signed."""

    kind = "slay-nystrom"
    Options = SlayNystromOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        d, P = self.head_dim, self.opts.poly_dim
        anchors = unit_anchors(P, d, generator)
        a = anchors.double()
        gram = (a @ a.T).pow(2) + self.opts.nystrom_reg * torch.eye(P, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(gram)
        w = evecs @ torch.diag(evals.clamp_min(1e-6).rsqrt()) @ evecs.T  # symmetric inverse square root
        self.register_buffer("anchors", anchors)  # (P, d)
        self.register_buffer("nystrom_w", w.float())  # (P, P)

    def poly(self, u_hat: Tensor) -> Tensor:
        anchors, w = self.anchors.to(u_hat.dtype), self.nystrom_w.to(u_hat.dtype)
        return (u_hat @ anchors.T).pow(2) @ w / math.sqrt(anchors.shape[0])


class SlayAnchorAttention(SlayBase):
    """Anchor features phi(u) = [(a_p.u)^2]_p / sqrt(P) >= 0 (the paper's recommended SLAY). Biased:
    targets ~ (x^2 + 1/2) / (C - 2x) as P grows (docs/attention.md §3.15). All features > 0 up to ties at
    0."""

    kind = "slay-anchor"
    Options = SlayPolyOptions

    def init_buffers(self, generator: torch.Generator) -> None:
        super().init_buffers(generator)
        self.register_buffer("anchors", unit_anchors(self.opts.poly_dim, self.head_dim, generator))  # (P, d)

    def poly(self, u_hat: Tensor) -> Tensor:
        anchors = self.anchors.to(u_hat.dtype)
        return (u_hat @ anchors.T).pow(2) / math.sqrt(anchors.shape[0])
