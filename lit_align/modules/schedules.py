"""Learning-rate schedules usable as ``lr_scheduler`` callables from YAML."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine"]


class WarmupCosine(LambdaLR):
    """Linear warmup to the base learning rate, then cosine decay to ``min_lr_ratio`` of it.

    Args:
        optimizer: the optimizer.
        warmup_steps: optimizer steps of linear warmup (from 1/warmup_steps of the rate).
        total_steps: optimizer steps of the whole run; ``None`` lets the module fill it in from
            ``trainer.estimated_stepping_batches``.
        min_lr_ratio: final rate as a fraction of the base rate (0 decays to zero).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 0,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got {warmup_steps}, {min_lr_ratio}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.total_steps or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
