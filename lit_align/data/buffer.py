"""A round's rollouts as training data: :class:`RolloutBuffer` (collation, per-round
log-probs) and :class:`StepBatchSampler` (optimizer steps and micro-batches with exact
normalizers)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from lit_align.rounds import Rollout

__all__ = ["RolloutBuffer", "StepBatchSampler"]


class RolloutBuffer(Dataset):
    """A round's rollouts; collates index lists into right-padded tensors.

    Per-round log-probs computed by the module (``old``, ``ref``) are stored per sample with
    :meth:`store` and laid out at the response positions by :meth:`collate`.
    """

    def __init__(self, samples: list[Rollout]) -> None:
        self.samples = samples
        self.extra: dict[str, dict[int, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def shortest_first(self, indices: Sequence[int] | None = None) -> list[int]:
        """``indices`` (default: all) sorted by total length, prompt + completion; stable."""
        order = range(len(self.samples)) if indices is None else indices
        s = self.samples
        return sorted(order, key=lambda i: len(s[i].prompt_ids) + len(s[i].completion_ids))

    def __getitem__(self, key: tuple[int, float, float]) -> tuple[int, float, float]:
        return key  # collate does the work, once per micro-batch

    def store(self, name: str, indices: Sequence[int], log_probs: torch.Tensor) -> None:
        """Keep ``log_probs`` (B, L) rows of a :meth:`collate` batch for those samples."""
        table = self.extra.setdefault(name, {})
        for row, i in enumerate(indices):
            s = self.samples[i]
            start = len(s.prompt_ids) - 1
            table[i] = log_probs[row, start : start + len(s.completion_ids)].detach().float().cpu()

    def collate(
        self, items: Sequence[tuple[int, float, float]] | Sequence[int], with_stored: bool = True
    ) -> dict[str, Any]:
        """(index, sequence normalizer, token normalizer) items → a micro-batch.

        Returns ``input_ids``/``labels`` (B, L), ``response_mask`` (B, L) (zero for dropped
        samples), ``completion_mask`` (B, L) (1 on the tokens the model sampled: an episode's
        environment tokens are 0), ``advantages``/``raw_rewards`` (B, 1),
        ``rollout_log_probs`` (B, L), stored per-round log-probs, ``weight_version`` (B,) (the
        optimizer step whose weights sampled each sample; -1: not known), the normalizers and
        ``indices``.
        """
        keys = [(k, None, None) if isinstance(k, int) else k for k in items]
        indices = [k[0] for k in keys]
        rows = [self.samples[i] for i in indices]
        width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rows)
        full = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width - 1))
        rollout_lp = torch.zeros((len(rows), width - 1))
        stored = self.extra if with_stored else {}
        extras = {name: torch.zeros((len(rows), width - 1)) for name in stored}
        for b, (i, r) in enumerate(zip(indices, rows, strict=True)):
            seq = r.prompt_ids + r.completion_ids
            full[b, : len(seq)] = torch.tensor(seq)
            span = slice(len(r.prompt_ids) - 1, len(r.prompt_ids) - 1 + len(r.completion_ids))
            # An episode's environment tokens are inputs only: no loss, no log-probs (mask 0).
            completion_mask[b, span] = (
                torch.tensor(r.sampled, dtype=torch.float) if r.sampled else 1.0
            )
            if r.rollout_log_probs:
                rollout_lp[b, span] = torch.tensor(r.rollout_log_probs)
            for name, table in stored.items():
                extras[name][b, span] = table[i]
        keep = torch.tensor([float(r.keep) for r in rows]).unsqueeze(-1)  # (B, 1)
        batch: dict[str, Any] = {
            "input_ids": full[:, :-1],
            "labels": full[:, 1:],
            "completion_mask": completion_mask,
            "response_mask": completion_mask * keep,
            "advantages": torch.tensor([r.advantage for r in rows]).unsqueeze(-1),
            "raw_rewards": torch.tensor([r.reward for r in rows]).unsqueeze(-1),
            "rollout_log_probs": rollout_lp,
            "weight_version": torch.tensor([-1 if r.version is None else r.version for r in rows]),
            "indices": indices,
            "sequence_normalizer": keys[0][1],
            "token_normalizer": keys[0][2],
        }
        batch.update({f"{name}_log_probs": t for name, t in extras.items()})
        return batch


class StepBatchSampler(Sampler[list[tuple[int, float, float]]]):
    """Micro-batches of a round. Per pass, a seeded shuffle is cut into optimizer steps of
    ``step_size`` samples (this rank's share) and micro-batches of ``micro_batch_size``.

    Within a step, samples are sorted by length before they are cut into micro-batches, so
    each micro-batch is padded little; the step's gradient, a sum over its micro-batches, is
    the same whatever their composition.

    Every index carries its step's normalizers, (sequences that count, tokens that count) over
    all ranks ÷ (accumulation × ranks): set them with :meth:`set_normalizers` from the summed
    :attr:`step_counts`, so DDP's gradient mean and Lightning's ÷ accumulation give the exact
    mean over the global step.
    """

    def __init__(
        self, buffer: RolloutBuffer, step_size: int, micro_batch_size: int, passes: int, seed: int
    ) -> None:
        self.micro = micro_batch_size
        self.steps: list[list[int]] = []
        for p in range(passes):
            order = list(range(len(buffer)))
            random.Random(seed * 7_919 + p).shuffle(order)
            self.steps += [order[s : s + step_size] for s in range(0, len(order), step_size)]
        self.steps = [buffer.shortest_first(step) for step in self.steps]
        kept = [[buffer.samples[i] for i in step if buffer.samples[i].keep] for step in self.steps]
        # (steps, 2): sequences and tokens that count in the loss, on this rank
        self.step_counts = torch.tensor(
            [[len(k), sum(r.sampled_tokens for r in k)] for k in kept], dtype=torch.float64
        )
        self.normalizers = self.step_counts.clamp(min=1)  # single process, accumulation 1

    def set_normalizers(self, global_counts: torch.Tensor, divisor: int) -> None:
        """``global_counts``: step_counts summed over ranks; ``divisor``: accumulation × ranks."""
        self.normalizers = global_counts.clamp(min=1) / divisor

    def __iter__(self) -> Iterator[list[tuple[int, float, float]]]:
        for step, (seqs, tokens) in zip(self.steps, self.normalizers.tolist(), strict=True):
            for m in range(0, len(step), self.micro):
                yield [(i, seqs, tokens) for i in step[m : m + self.micro]]

    def __len__(self) -> int:
        return sum(-(-len(step) // self.micro) for step in self.steps)
