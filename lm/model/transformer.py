"""The shared trunk: token embeddings (+ absolute positions) -> N blocks -> final norm (pre-norm only).

The encoder (bidirectional, key-padding mask) and the decoder (causal, KV cache) are the same module with
`causal` switched; the task models in tasks.py sit on top. With `gradient_checkpointing` each block's
activations are recomputed in backward (torch.utils.checkpoint, non-reentrant, RNG state preserved so
dropout masks are the same), trading ~1/3 more compute for memory that no longer grows with n_layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lm.attention_kinds import resolve_attention_options
from lm.config import ModelConfig
from lm.errors import LmError
from lm.model.attention.base import ExactState, LinearState
from lm.model.block import Block
from lm.model.dropout import Dropout
from lm.model.norms import make_norm
from lm.model.positions import AbsolutePositions


@dataclass
class KVCache:
    """Decoding state of a causal trunk: one state per layer and the number of tokens already consumed."""

    states: list[ExactState | LinearState]
    length: int


@dataclass
class TrunkOutput:
    hidden: Tensor  # (B, L, E)
    attentions: list[Tensor] | None
    cache: KVCache | None


class Transformer(nn.Module):
    def __init__(
        self, cfg: ModelConfig, *, vocab_size: int, max_len: int, causal: bool, seed: int = 0
    ) -> None:
        super().__init__()
        self.config, self.max_len, self.causal = cfg, max_len, causal
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.positions = AbsolutePositions(cfg.positions, max_len, cfg.d_model)
        # BERT's token-type embedding of segment 0, which every token of a single-segment input gets
        self.type_emb = nn.Embedding(1, cfg.d_model) if cfg.token_type else None
        self.embed_norm = (
            make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
            if cfg.embed_norm
            else nn.Identity()
        )
        self.drop = Dropout(cfg.dropout)
        # random feature buffers of every layer come from this generator, drawn once, in layer order
        generator = torch.Generator().manual_seed(int(seed) + 0x5EED)
        attention = resolve_attention_options(cfg.attention, cfg.attention_options)  # once, for every block
        self.blocks = nn.ModuleList(
            Block(cfg, max_len=max_len, generator=generator, attention_options=attention)
            for _ in range(cfg.n_layers)
        )
        self.final_norm = (
            make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
            if cfg.norm_position == "pre"
            else nn.Identity()
        )
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual output projections scaled by 1/sqrt(2N)."""
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        resid_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=resid_std)
            nn.init.normal_(block.mlp.fc_out.weight, std=resid_std)

    def forward(
        self,
        input_ids: Tensor,
        key_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_attention: bool = False,
        final_rows: slice | None = None,
    ) -> TrunkOutput:
        """input_ids: (B, L) long; key_mask: (B, L) bool, True = real token (for the new tokens only).
        final_rows: the positions the caller reads; the last block computes only those (hidden: (B, L', E))."""
        if input_ids.dim() != 2:
            raise LmError(f"input_ids must be a (batch, length) tensor, got shape {tuple(input_ids.shape)}")
        if (cache is not None or use_cache) and not self.causal:
            raise LmError("a KV cache is only available for the causal (clm) model")
        L = input_ids.shape[1]
        offset = cache.length if cache is not None else 0
        if offset + L > self.max_len:
            raise LmError(
                f"sequence of {offset + L} tokens exceeds the model's max_len {self.max_len}; crop the input"
            )
        x = self.tok_emb(input_ids)
        if self.type_emb is not None:
            x = x + self.type_emb.weight[0]
        x = self.drop(self.embed_norm(self.positions(x, offset)))  # (B, L, E)
        recompute = (
            self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not use_cache
        )
        attentions: list[Tensor] | None = [] if return_attention else None
        states = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            kw = dict(
                key_mask=key_mask,
                causal=self.causal,
                state=cache.states[i] if cache is not None else None,
                offset=offset,
                use_cache=use_cache,
                return_attention=return_attention,
                rows=final_rows if i == last else None,
            )
            if recompute:
                x, w, st = checkpoint(block, x, use_reentrant=False, **kw)
            else:
                x, w, st = block(x, **kw)
            if attentions is not None:
                attentions.append(w)
            states.append(st)
        new_cache = KVCache(states=states, length=offset + L) if use_cache else None
        return TrunkOutput(self.final_norm(x), attentions, new_cache)
