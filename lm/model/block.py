"""One transformer block: attention and MLP sublayers with residuals, pre-norm (GPT-2) or post-norm
(the original Transformer / BERT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lm.attention_kinds import AttentionOptions
from lm.config import ModelConfig
from lm.model.attention import build_attention
from lm.model.attention.base import Pass, State
from lm.model.dropout import Dropout
from lm.model.mlp import make_mlp
from lm.model.norms import make_norm


class Block(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        *,
        max_len: int,
        generator: torch.Generator,
        attention_options: AttentionOptions,
    ) -> None:
        """attention_options: `cfg.attention_options` resolved (by the trunk, once for all its blocks)."""
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = build_attention(cfg, max_len=max_len, generator=generator, options=attention_options)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, p: Pass) -> tuple[Tensor, Tensor | None]:
        """x: (B, L, E) -> (B, L, E), and this layer's attention weights when p.return_attention."""
        a = self.attn(self.attention_input(x), p)
        return self.residuals(x, a.out), a.weights

    def decode(self, x: Tensor, p: Pass, state: State | None) -> tuple[Tensor, State]:
        """`forward` for the tokens after the cached ones: x (B, L, E) -> (B, L, E) and the grown state."""
        out, state = self.attn.decode(self.attention_input(x), p, state)
        return self.residuals(x, out), state

    def attention_input(self, x: Tensor) -> Tensor:
        """What the attention reads: the normed x (pre-norm) or x itself (post-norm)."""
        return self.norm1(x) if self.pre_norm else x

    def residuals(self, x: Tensor, attn_out: Tensor) -> Tensor:
        """The rest of the block after attention: its residual, then the MLP sublayer. x: the block's input
        (B, L, E), attn_out: the attention's output for the same rows."""
        if self.pre_norm:
            x = x + self.drop(attn_out)
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(attn_out))
        return self.norm2(x + self.drop(self.mlp(x)))
