"""BERT masked-language-model corruption: choose ~mask_prob of the real tokens; of those, 80% become
<|mask|>, 10% a random ordinary token and 10% stay unchanged (Devlin et al. 2019, §3.1).

Training draws fresh masks every time a batch is seen (dynamic masking, RoBERTa); validation and test use
masks fixed by the seed so that losses are comparable across evaluations and runs.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,  # (B, L) long
    attention_mask: torch.Tensor,  # (B, L) bool, True on real tokens
    *,
    mask_prob: float,
    mask_id: int,
    special_ids: list[int],
    n_ordinary: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input_ids, labels) where labels are IGNORE_INDEX except at chosen positions.

    Ordinary (non-special) token ids are assumed to be 0..n_ordinary-1, as in lm's tokenizer layout.
    Every row with at least one maskable token gets at least one prediction target, so short rows still
    contribute to the loss.
    """
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in special_ids:
        special |= input_ids == sid
    maskable = attention_mask.bool() & ~special  # (B, L)
    u = torch.rand(input_ids.shape, generator=generator)
    chosen = (u < mask_prob) & maskable
    # guarantee one target per row that has any maskable token: take its lowest-u maskable position
    u_masked = torch.where(maskable, u, torch.full_like(u, 2.0))
    first = u_masked.argmin(dim=1, keepdim=True)  # (B, 1)
    has_any = maskable.any(dim=1, keepdim=True)
    chosen |= torch.zeros_like(chosen).scatter_(1, first, True) & has_any
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = torch.randint(0, n_ordinary, input_ids.shape, generator=generator)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels
