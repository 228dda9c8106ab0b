"""Rollout samples to TensorBoard, and throughput / memory per round.

Both read the latest :class:`~lit_align.rounds.Round` of a rollout DataModule (through
:func:`lit_align.contracts.latest_round`: records and metrics), whatever module trains on it.
"""

from __future__ import annotations

import resource
import time

import lightning as L
import torch

from lit_align.contracts import latest_round
from lit_align.evaluation import log_generations
from lit_align.metrics import (
    PEAK_GIB,
    PEAK_RSS_GIB,
    ROLLOUT_FRACTION,
    ROLLOUT_S,
    TRAIN_S,
    TRAIN_TOKENS_PER_S,
)

__all__ = ["GenerationSamples", "Throughput"]


class GenerationSamples(L.Callback):
    """Write a few of each round's rollouts (prompt, response, ground truth, rewards, entropy) as
    TensorBoard text, under ``rollout/sample_*``, and append them to ``samples.jsonl`` in the run
    directory (one record per line, with ``step`` and ``round``), so how the responses change over
    training can be read, or compared early vs late.

    Args:
        num_samples: rollouts written per round.
        every_n_rounds: write every n-th round.
        jsonl: also write ``samples.jsonl``.
    """

    def __init__(self, num_samples: int = 4, every_n_rounds: int = 1, jsonl: bool = True) -> None:
        self.num_samples = num_samples
        self.every_n_rounds = max(1, every_n_rounds)
        self.jsonl = jsonl

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latest = latest_round(trainer)
        records = latest.records if latest is not None else None
        writer = getattr(trainer.logger, "experiment", None) if trainer.logger else None
        if not records or not trainer.is_global_zero or not hasattr(writer, "add_text"):
            return
        if trainer.current_epoch % self.every_n_rounds == 0:
            # Text only: the round's statistics are logged by its DataModule under rollout/*.
            log_generations(
                records, writer, trainer.global_step, self.num_samples, "rollout", scalars=False
            )
            if self.jsonl and trainer.log_dir:
                import json
                from pathlib import Path

                keep = {"step": trainer.global_step, "round": trainer.current_epoch}
                with open(Path(trainer.log_dir) / "samples.jsonl", "a", encoding="utf-8") as f:
                    for record in records[: self.num_samples]:
                        f.write(json.dumps({**keep, **record}, default=str) + "\n")


class Throughput(L.Callback):
    """Per round: rollout vs training seconds, generated and trained tokens per second, and peak
    memory (CUDA allocator peak on GPU, process peak RSS on CPU)."""

    def __init__(self) -> None:
        self._start = 0.0
        self._tokens = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._tokens = time.perf_counter(), 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if isinstance(batch, dict) and "input_ids" in batch:
            self._tokens += int(batch["input_ids"].numel())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_s = time.perf_counter() - self._start
        metrics = {
            TRAIN_S: train_s,
            TRAIN_TOKENS_PER_S: self._tokens / max(train_s, 1e-9),
        }
        latest = latest_round(trainer)
        rollout_s = latest.metrics.get(ROLLOUT_S) if latest is not None else None
        if rollout_s is not None:
            metrics[ROLLOUT_FRACTION] = rollout_s / max(rollout_s + train_s, 1e-9)
        if torch.cuda.is_available():
            metrics[PEAK_GIB] = torch.cuda.max_memory_allocated() / 2**30
        else:
            metrics[PEAK_RSS_GIB] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
