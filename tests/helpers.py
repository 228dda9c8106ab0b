"""Helpers shared by the test files: a quiet CPU trainer and a reward that varies for untrained
tiny models."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lit_align.rewards import RewardEvaluator

__all__ = ["DistinctCharacters", "cpu_trainer"]

# A CPU trainer that writes nothing and validates only when a test asks: no logger, checkpoints,
# progress bar, model summary or sanity pass; one epoch is one round (reloaded dataloaders).
_QUIET: dict[str, Any] = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
    max_epochs=2,
    reload_dataloaders_every_n_epochs=1,
)


def cpu_trainer(callbacks: Any = (), **kw: Any) -> L.Trainer:
    """A quiet CPU ``L.Trainer``; keyword arguments override the defaults above."""
    return L.Trainer(callbacks=list(callbacks), **{**_QUIET, **kw})


class DistinctCharacters(RewardEvaluator):
    """A reward that varies for an untrained model (the math grader gives it all zeros)."""

    component_names = ("distinct",)
    total_weights = (1.0,)

    def score(self, prompts, completions, answers):
        return torch.tensor([[len(set(c)) / 10.0] for c in completions])
