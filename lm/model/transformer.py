"""The shared trunk: token embeddings (+ absolute positions) -> N blocks -> final norm (pre-norm only).

The encoder (bidirectional, key-padding mask) and the decoder (causal) are the same module with `causal`
switched; the task models in tasks.py sit on top. `forward` runs every block over the whole sequence
(training and evaluation); `decode` is the cached path of a causal trunk, which takes and returns a
`KVCache`. Both build one `Pass` (mask, causal, offset, return_attention) per call and hand it to every block.

With `gradient_checkpointing` each block's activations are recomputed in backward (torch.utils.checkpoint,
non-reentrant, RNG state preserved so dropout masks are the same), trading ~1/3 more compute for memory that
no longer grows with n_layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lm.attention_kinds import resolve_attention_options
from lm.config import ModelConfig
from lm.errors import LmError
from lm.model.attention.base import Pass, State
from lm.model.block import Block
from lm.model.dropout import Dropout
from lm.model.norms import make_norm
from lm.model.positions import AbsolutePositions

T = TypeVar("T")


@dataclass
class KVCache:
    """Decoding state of a causal trunk: one state per layer and the number of tokens already consumed."""

    states: list[State]
    length: int


@dataclass
class TrunkOutput:
    hidden: Tensor  # (B, L, E)
    attentions: list[Tensor] | None  # one (B, H, L, L) per layer when return_attention


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
        self, input_ids: Tensor, key_mask: Tensor | None = None, *, return_attention: bool = False
    ) -> TrunkOutput:
        """Training and evaluation: every block over the whole sequence. input_ids: (B, L) long; key_mask:
        (B, L), True / 1 = real token."""
        p = self.pass_for(input_ids, key_mask, return_attention=return_attention)
        x = self.embed(input_ids)  # (B, L, E)
        attentions: list[Tensor] | None = [] if return_attention else None
        for block in self.blocks:
            x, weights = self.run(block, x, p)
            if attentions is not None:
                attentions.append(weights)
        return TrunkOutput(self.final_norm(x), attentions)

    def decode(
        self, input_ids: Tensor, key_mask: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, KVCache]:
        """Cached decoding: the new tokens input_ids (B, L) after the cache.length ones `cache` holds (None:
        none yet) -> hidden (B, L, E) and the cache grown by them. key_mask covers the new tokens."""
        if not self.causal:
            raise LmError("a KV cache is only available for the causal (clm) model")
        offset = cache.length if cache is not None else 0
        p = self.pass_for(input_ids, key_mask, offset=offset)
        x = self.embed(input_ids, offset)
        states = []
        for i, block in enumerate(self.blocks):
            x, state = block.decode(x, p, cache.states[i] if cache is not None else None)
            states.append(state)
        return self.final_norm(x), KVCache(states=states, length=offset + input_ids.shape[1])

    def pass_for(
        self, input_ids: Tensor, key_mask: Tensor | None, *, offset: int = 0, return_attention: bool = False
    ) -> Pass:
        """The input checked, and what every block of this call reads (the key mask as bool, once)."""
        if input_ids.dim() != 2:
            raise LmError(f"input_ids must be a (batch, length) tensor, got shape {tuple(input_ids.shape)}")
        length = offset + input_ids.shape[1]
        if length > self.max_len:
            raise LmError(
                f"sequence of {length} tokens exceeds the model's max_len {self.max_len}; crop the input"
            )
        if key_mask is not None:
            key_mask = key_mask.to(device=input_ids.device, dtype=torch.bool)
        return Pass(key_mask=key_mask, causal=self.causal, offset=offset, return_attention=return_attention)

    def embed(self, input_ids: Tensor, offset: int = 0) -> Tensor:
        """Token (+ token-type) + position embeddings of positions offset.., normed and dropped: (B, L, E)."""
        x = self.tok_emb(input_ids)
        if self.type_emb is not None:
            x = x + self.type_emb.weight[0]
        return self.drop(self.embed_norm(self.positions(x, offset)))

    def run(self, layer: Callable[..., T], *args: Any) -> T:
        """layer(*args), recomputed in backward instead of kept when gradient checkpointing is on (training
        with gradients only: evaluation and decoding keep nothing anyway)."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)
