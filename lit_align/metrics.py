"""Metric names, and the one summary of graded records.

Logging, tests and reports read the same strings from here. Names are ``prefix/key``:
``rollout/`` (a round's samples), ``val/`` (validation by generation), ``train/`` (the loss and
optimizer), ``time/`` and ``memory/``. A graded record (see :mod:`lit_align.grading`) is
summarized by :func:`summarize_records` wherever records are summarized: rounds,
``lit_align eval`` and the sample logger; validation streams the means of :data:`PER_RECORD`
across batches and ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "ENGINE_MISMATCH",
    "GRADER_TIMEOUTS",
    "GRADER_TIMEOUTS_KEY",
    "KL_TO_ROLLOUT",
    "MEMORY",
    "PER_RECORD",
    "ROLLOUT",
    "ROLLOUT_FRACTION",
    "ROLLOUT_S",
    "TIME",
    "TRAIN",
    "TRAIN_S",
    "VAL",
    "WEIGHT_SYNC_S",
    "mean",
    "prefixed",
    "summarize_records",
]

ROLLOUT, VAL, TRAIN, TIME, MEMORY = "rollout", "val", "train", "time", "memory"

WEIGHT_SYNC_S = "time/weight_sync_s"  # seconds to push the policy's weights into the engine
ROLLOUT_S = "time/rollout_s"  # seconds the engine spent generating a round
TRAIN_S = "time/train_s"  # seconds of a round's optimizer steps
ROLLOUT_FRACTION = "time/rollout_fraction"
ENGINE_MISMATCH = "train/engine_logprob_mismatch"  # nats/token, engine vs trainer, same weights
KL_TO_ROLLOUT = "train/kl_to_rollout"  # k3 KL of the policy to the one that sampled the round
GRADER_TIMEOUTS_KEY = "grader_timeouts"  # answers scored 0 because grading ran out of time
GRADER_TIMEOUTS = "reward/" + GRADER_TIMEOUTS_KEY  # per round; lit_align eval writes it too

# Per-record values whose means are the validation metrics (val/<key>).
PER_RECORD: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "accuracy": lambda r: float(r["correct"]),
    "format_rate": lambda r: float(r["formatted"]),
    "reward": lambda r: float(r["reward"]),
    "response_length": lambda r: float(r["length"]),
    "token_entropy": lambda r: float(r.get("mean_entropy", 0.0)),
}


def mean(values: Sequence[float]) -> float:
    """Mean of ``values``; 0.0 for none."""
    return sum(values) / len(values) if values else 0.0


def prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{prefix/key: value}``."""
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


def summarize_records(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy, format rate, reward, response lengths (all, min, max, correct, incorrect), mean
    token entropy and truncated fraction of graded records (a missing field counts as false/0)."""
    lengths = [float(r["length"]) for r in records]
    right = [bool(r.get("correct")) for r in records]
    return {
        "accuracy": mean([float(c) for c in right]),
        "format_rate": mean([float(bool(r.get("formatted"))) for r in records]),
        "reward_mean": mean([float(r.get("reward", 0.0)) for r in records]),
        "response_length_mean": mean(lengths),
        "response_length_min": min(lengths, default=0.0),
        "response_length_max": max(lengths, default=0.0),
        "response_length_correct": mean([n for n, c in zip(lengths, right, strict=True) if c]),
        "response_length_incorrect": mean(
            [n for n, c in zip(lengths, right, strict=True) if not c]
        ),
        "token_entropy_mean": mean([float(r.get("mean_entropy", 0.0)) for r in records]),
        "truncated_frac": mean([float(r.get("finish_reason") == "length") for r in records]),
    }
