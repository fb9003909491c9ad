"""One transformer block: attention and MLP sublayers with residuals, pre-norm (GPT-2) or post-norm
(the original Transformer / BERT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lm.attention_kinds import AttentionOptions
from lm.config import ModelConfig
from lm.model.attention import build_attention
from lm.model.attention.base import ExactState, LinearState
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
        attention_options: AttentionOptions | None = None,
    ) -> None:
        """attention_options: `cfg.attention_options` already resolved (the trunk resolves them once for all
        its blocks); None resolves them here."""
        super().__init__()
        self.pre_norm = cfg.norm_position == "pre"
        self.norm1 = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = build_attention(cfg, max_len=max_len, generator=generator, options=attention_options)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        key_mask: Tensor | None,
        causal: bool,
        state: ExactState | LinearState | None = None,
        offset: int = 0,
        use_cache: bool = False,
        return_attention: bool = False,
        rows: slice | None = None,
    ) -> tuple[Tensor, Tensor | None, ExactState | LinearState | None]:
        """x: (B, L, E) -> (B, L, E), this layer's attention weights (or None), its new cache state.
        rows: keep only these positions of the output (every position still serves as a key): a classifier
        reading the CLS token needs just row 0 of the last block, which skips its output projection and MLP
        for the other positions."""
        kw = dict(
            key_mask=key_mask,
            causal=causal,
            state=state,
            offset=offset,
            use_cache=use_cache,
            return_attention=return_attention,
            rows=rows,
        )
        residual = x if rows is None else x[:, rows]
        if self.pre_norm:
            a = self.attn(self.norm1(x), **kw)
            x = residual + self.drop(a.out)
            x = x + self.drop(self.mlp(self.norm2(x)))
        else:
            a = self.attn(x, **kw)
            x = self.norm1(residual + self.drop(a.out))
            x = self.norm2(x + self.drop(self.mlp(x)))
        return x, a.weights, a.state
