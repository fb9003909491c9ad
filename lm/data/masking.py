"""BERT masked-language-model corruption: choose ~mask_prob of the real tokens; of those, 80% become
<|mask|>, 10% a random ordinary token and 10% stay unchanged (Devlin et al. 2019, §3.1).

Every random draw is a hash of (seed, epoch, document row, position, draw), not a generator's output, so a
row's mask does not depend on which process, micro-batch or batch width it lands in: 2 DDP processes, or 4
accumulated micro-batches, corrupt exactly the tokens one big batch would. Training passes its epoch
(dynamic masking, RoBERTa: new masks every epoch); validation and test pass EVAL_EPOCH, so their masks are
fixed by the seed and losses stay comparable across evaluations and runs.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100
EVAL_EPOCH = -1  # the "epoch" of validation/test masks: never a training epoch

_M64 = (1 << 64) - 1
_SELECT, _ACTION, _RANDOM, _DROP = 0, 1, 2, 3  # independent draws per position


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (Steele et al. 2014): a bijection on uint64 whose output bits look independent."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, epoch: int, rows: np.ndarray, width: int, draw: int) -> np.ndarray:
    """Uniform [0, 1) float64 of shape (len(rows), width): entry (i, j) depends only on
    (seed, epoch, rows[i], j, draw). 53 random bits each, like torch.rand in double precision."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([seed & _M64], dtype=np.uint64))
        key = _mix(key ^ np.uint64(epoch & _M64))
        key = _mix(key ^ np.uint64(draw & _M64))
        h = _mix(key ^ np.asarray(rows, dtype=np.int64).astype(np.uint64)[:, None])  # (B, 1)
        h = _mix(h ^ np.arange(width, dtype=np.uint64)[None, :])  # (B, W)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _is_special(input_ids: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """(B, L) bool: positions holding one of the special ids (never masked, never dropped)."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in special_ids:
        special |= input_ids == sid
    return special


def mask_tokens(
    input_ids: torch.Tensor,  # (B, L) long
    attention_mask: torch.Tensor,  # (B, L) bool, True on real tokens
    *,
    mask_prob: float,
    mask_id: int,
    special_ids: list[int],
    n_ordinary: int,
    rows: torch.Tensor | np.ndarray,  # (B,) document index of each row: the key of its mask
    seed: int,
    epoch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (corrupted input_ids, labels) where labels are IGNORE_INDEX except at chosen positions.

    Ordinary (non-special) token ids are assumed to be 0..n_ordinary-1, as in lm's tokenizer layout; special
    and padding positions are never chosen. Every row with at least one maskable token gets at least one
    prediction target, so short rows still contribute to the loss.
    """
    rows = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows)
    _, L = input_ids.shape
    maskable = attention_mask.bool() & ~_is_special(input_ids, special_ids)  # (B, L)
    u = torch.from_numpy(hash_uniform(seed, epoch, rows, L, _SELECT))  # (B, L)
    chosen = (u < mask_prob) & maskable
    # guarantee one target per row that has any maskable token: take its lowest-u maskable position
    u_masked = torch.where(maskable, u, torch.full_like(u, 2.0))
    first = u_masked.argmin(dim=1, keepdim=True)  # (B, 1)
    has_any = maskable.any(dim=1, keepdim=True)
    chosen |= torch.zeros_like(chosen).scatter_(1, first, True) & has_any
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    action = torch.from_numpy(hash_uniform(seed, epoch, rows, L, _ACTION))  # (B, L)
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = (torch.from_numpy(hash_uniform(seed, epoch, rows, L, _RANDOM)) * n_ordinary).long()
    random_ids = random_ids.clamp_(max=n_ordinary - 1)
    corrupted = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def drop_tokens(
    input_ids: torch.Tensor,  # (B, L) long
    attention_mask: torch.Tensor,  # (B, L) bool
    *,
    rate: float,
    mask_id: int,
    special_ids: list[int],
    rows: torch.Tensor | np.ndarray,
    seed: int,
    epoch: int,
) -> torch.Tensor:
    """Token dropout for classifier training: each ordinary real token becomes <|mask|> with probability
    `rate`, so the model cannot lean on any single word and reads the rest of the text (word dropout, a
    standard regulariser for small labelled sets). Drawn from the same (seed, epoch, row, position) hash as
    the masked-LM corruption, so it is identical whatever the batching, sharding or resume point."""
    if rate <= 0:
        return input_ids
    rows = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows)
    u = torch.from_numpy(hash_uniform(seed, epoch, rows, input_ids.shape[1], _DROP))
    dropped = (u < rate) & attention_mask.bool() & ~_is_special(input_ids, special_ids)
    return torch.where(dropped, torch.full_like(input_ids, mask_id), input_ids)
