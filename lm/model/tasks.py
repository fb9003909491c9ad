"""Task models on the shared trunk, and `build_model`.

* SequenceClassifier: bidirectional encoder, pooled (CLS = position 0, or mean over real tokens), a small
  tanh head (BERT pooler) -> one logit.
* MaskedLM: bidirectional encoder + LM head (tied to the token embeddings when `tie_embeddings`).
* CausalLM: causal decoder + LM head; `decode` is its cached path (a KV cache for incremental decoding).

Given `labels`, the LMs return the summed cross-entropy (`out.loss`) computed chunk by chunk with the head
(lm_loss.py) instead of the full logits: that is how training calls them.

`ModelConfig.bias` puts biases in the pooler, the classifier and the LM head; an LM head tied to the token
embeddings never has one (GPT-2's convention), so the bias follows `bias and not tie_embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lm.config import TASKS, ModelConfig, Task
from lm.data.masking import IGNORE_INDEX
from lm.errors import LmError
from lm.model.attention.base import Pass
from lm.model.block import Block
from lm.model.dropout import Dropout
from lm.model.lm_loss import linear_cross_entropy_sum
from lm.model.transformer import KVCache, Transformer


@dataclass
class ModelOutput:
    logits: Tensor | None  # classify: (B,); mlm/clm: (B, L, V); None when an LM got `labels`
    loss: Tensor | None = None  # mlm/clm with `labels`: summed cross-entropy over the labelled positions
    attentions: list[Tensor] | None = None  # one (B, H, L, L) per layer when return_attention
    cache: KVCache | None = None  # CausalLM.decode only


def _key_mask(attention_mask: Tensor | None, input_ids: Tensor) -> Tensor | None:
    """attention_mask (B, L) of 1/True for real tokens -> bool, checked against input_ids' shape."""
    if attention_mask is None:
        return None
    if attention_mask.shape != input_ids.shape:
        raise LmError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
            f"{tuple(input_ids.shape)}"
        )
    return attention_mask.to(device=input_ids.device) != 0


class _TaskModel(nn.Module):
    def __init__(
        self, cfg: ModelConfig, *, vocab_size: int, max_len: int, pad_id: int, causal: bool, seed: int
    ):
        super().__init__()
        self.config, self.max_len, self.pad_id, self.vocab_size = cfg, max_len, pad_id, vocab_size
        self.trunk = Transformer(cfg, vocab_size=vocab_size, max_len=max_len, causal=causal, seed=seed)

    def _lm_head(self) -> nn.Linear:
        bias = self.config.bias and not self.config.tie_embeddings
        head = nn.Linear(self.config.d_model, self.vocab_size, bias=bias)
        nn.init.normal_(head.weight, std=0.02)
        if bias:
            nn.init.zeros_(head.bias)
        if self.config.tie_embeddings:
            head.weight = self.trunk.tok_emb.weight  # one Parameter, shared storage
        return head

    def _head_output(
        self, hidden: Tensor, labels: Tensor | None, label_rows: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(logits, None), or with labels (None, loss sum) through the chunked head + cross-entropy, which
        never builds the (B, L, V) logits and skips positions labelled IGNORE_INDEX (label_rows: the flat
        indices of the others, when the caller has them)."""
        if labels is None:
            return self.lm_head(hidden), None
        if labels.shape != hidden.shape[:-1]:
            raise LmError(
                f"labels shape {tuple(labels.shape)} does not match input_ids {tuple(hidden.shape[:-1])}"
            )
        return None, linear_cross_entropy_sum(
            hidden, self.lm_head.weight, self.lm_head.bias, labels, IGNORE_INDEX, label_rows
        )


class SequenceClassifier(_TaskModel):
    # CLS pooling reads position 0 only, so the last block computes that row alone (`cls_hidden`);
    # benchmarks/train_step.py switches this off to time the model computing every row, as BERT does
    cls_row_only = True

    def __init__(self, cfg: ModelConfig, *, vocab_size: int, max_len: int, pad_id: int, seed: int = 0):
        super().__init__(cfg, vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, causal=False, seed=seed)
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, 1, bias=cfg.bias)
        for lin in (self.pooler, self.classifier):
            nn.init.normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, return_attention: bool = False
    ) -> ModelOutput:
        mask = _key_mask(attention_mask, input_ids)
        cls = self.config.pooling == "cls"
        if cls and self.cls_row_only and not return_attention:  # the full maps need every row
            return ModelOutput(logits=self.pooled_logits(self.cls_hidden(input_ids, mask)))
        t = self.trunk(input_ids, mask, return_attention=return_attention)
        h = t.hidden  # (B, L, E)
        if cls:
            pooled = h[:, 0]
        else:
            m = (mask if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)).to(h.dtype)[
                ..., None
            ]
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, E) mean over real tokens
        return ModelOutput(logits=self.pooled_logits(pooled), attentions=t.attentions)

    def pooled_logits(self, pooled: Tensor) -> Tensor:
        """BERT's pooler (tanh) and the classifier: (B, E) -> (B,) logits."""
        return self.classifier(self.drop(torch.tanh(self.pooler(pooled)))).squeeze(-1)

    def cls_hidden(self, input_ids: Tensor, key_mask: Tensor | None) -> Tensor:
        """The trunk's output at the CLS position, (B, E), with its last block computing that row alone: the
        other rows' output projection and MLP would only be thrown away (they still serve as keys there)."""
        trunk = self.trunk
        p = trunk.pass_for(input_ids, key_mask)
        x = trunk.embed(input_ids)  # (B, L, E)
        *body, last = trunk.blocks
        for block in body:
            x, _ = trunk.run(block, x, p)
        x = trunk.run(cls_row, last, x, p)  # (B, 1, E)
        return trunk.final_norm(x)[:, 0]


def cls_row(block: Block, x: Tensor, p: Pass) -> Tensor:
    """`block` for its first query (CLS) alone: x (B, L, E) -> (B, 1, E); keys and values from every row."""
    heads, _ = block.attn.attend(block.attention_input(x), p)  # (B, H, L, d)
    return block.residuals(x[:, :1], block.attn.merge(heads[:, :, :1], x.dtype))


class MaskedLM(_TaskModel):
    def __init__(self, cfg: ModelConfig, *, vocab_size: int, max_len: int, pad_id: int, seed: int = 0):
        super().__init__(cfg, vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, causal=False, seed=seed)
        self.lm_head = self._lm_head()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        label_rows: Tensor | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """labels: (B, L) token ids to predict, IGNORE_INDEX elsewhere -> out.loss (sum) instead of logits;
        label_rows: the flat indices of the labelled positions (optional: saves a device search)."""
        t = self.trunk(input_ids, _key_mask(attention_mask, input_ids), return_attention=return_attention)
        logits, loss = self._head_output(t.hidden, labels, label_rows)
        return ModelOutput(logits=logits, loss=loss, attentions=t.attentions)  # logits (B, L, V)


class CausalLM(_TaskModel):
    def __init__(self, cfg: ModelConfig, *, vocab_size: int, max_len: int, pad_id: int, seed: int = 0):
        super().__init__(cfg, vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, causal=True, seed=seed)
        self.lm_head = self._lm_head()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        label_rows: Tensor | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """labels: (B, L) next token of each position (already shifted), IGNORE_INDEX where none -> out.loss
        (sum) instead of logits; label_rows as for the masked LM."""
        t = self.trunk(input_ids, _key_mask(attention_mask, input_ids), return_attention=return_attention)
        logits, loss = self._head_output(t.hidden, labels, label_rows)
        return ModelOutput(logits=logits, loss=loss, attentions=t.attentions)

    def decode(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, cache: KVCache | None = None
    ) -> ModelOutput:
        """Cached decoding: logits (B, L, V) of the new tokens input_ids (B, L), and `out.cache`, grown by
        them; pass it back with the next tokens (cache=None starts one, e.g. with the prompt). attention_mask
        may cover the new tokens only, or the cached plus the new ones."""
        if (
            attention_mask is not None
            and cache is not None
            and attention_mask.shape[1] == cache.length + input_ids.shape[1]
        ):
            attention_mask = attention_mask[:, cache.length :]
        hidden, cache = self.trunk.decode(input_ids, _key_mask(attention_mask, input_ids), cache)
        return ModelOutput(logits=self.lm_head(hidden), cache=cache)


_MODELS: dict[str, type[_TaskModel]] = {"classify": SequenceClassifier, "mlm": MaskedLM, "clm": CausalLM}


def build_model(
    cfg: ModelConfig, *, task: Task, vocab_size: int, max_len: int, pad_id: int, seed: int = 0
) -> nn.Module:
    """The model for `task`. Parameters and random attention buffers are fully determined by `seed`
    (the global RNG is left untouched)."""
    if task not in _MODELS:
        raise LmError(f"task: unknown task {task!r} (choose {', '.join(TASKS[:-1])} or {TASKS[-1]})")
    if vocab_size < 1 or max_len < 1:
        raise LmError(f"vocab_size ({vocab_size}) and max_len ({max_len}) must be positive")
    if not 0 <= pad_id < vocab_size:
        raise LmError(f"pad_id {pad_id} is outside the vocabulary of {vocab_size} tokens")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _MODELS[task](cfg, vocab_size=vocab_size, max_len=max_len, pad_id=pad_id, seed=seed)
