"""An exponential moving average of the weights (`train.ema_decay`), validated and exported instead of the
raw weights.

Why: on a small labelled set the weights after any single step carry that step's noise, and the validation
metric that picks the exported step is noisy too; the average of the recent steps is a cheap ensemble of
them (Polyak averaging, as in SWA and in most modern training recipes). The decay is warmed up as
min(decay, (1 + step) / (10 + step)), so early averages are not dominated by the random initialisation.
The average is a pure function of the weights seen at each step, so it is saved in the checkpoint and a
resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]  # de-duplicated: tied weights once
        self.shadow = [p.detach().clone() for p in self.params]

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step `step` (1-based)."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay_at(step))

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after it."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], backup)

    def state(self) -> list[torch.Tensor]:
        return [t.detach().clone().cpu() for t in self.shadow]

    def load_state(self, state: list[torch.Tensor]) -> None:
        if len(state) != len(self.shadow):
            raise ValueError(f"weight average holds {len(state)} tensors, the model has {len(self.shadow)}")
        for mine, saved in zip(self.shadow, state):
            mine.copy_(saved)
