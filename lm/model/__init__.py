"""Transformers written from scratch: attention kinds, positions, norms, MLP, blocks, trunk and task heads.

from lm.model import build_model, ModelOutput
model = build_model(cfg.model, task="clm", vocab_size=2048, max_len=64, pad_id=1, seed=0)
out = model(input_ids, attention_mask)          # out.logits (or out.loss with labels=), out.attentions
step = model.decode(input_ids)                  # clm, cached: step.logits, step.cache for the next tokens
model, model_cfg = load_hf_checkpoint("hf_dir")  # a Hugging Face GPT-2 / Llama checkpoint as an lm CausalLM
"""

from lm.model.hf import load_hf_checkpoint
from lm.model.tasks import CausalLM, MaskedLM, ModelOutput, SequenceClassifier, build_model
from lm.model.transformer import KVCache

__all__ = [
    "CausalLM",
    "KVCache",
    "MaskedLM",
    "ModelOutput",
    "SequenceClassifier",
    "build_model",
    "load_hf_checkpoint",
]
