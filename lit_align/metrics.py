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
    "CLIP_FRAC",
    "EI_KEPT",
    "EI_KEPT_FRACTION",
    "EI_SOLVED_FRAC",
    "EI_UNSOLVED",
    "ENGINE_MISMATCH",
    "ENVIRONMENT_TOKENS",
    "EPISODE_TRUNCATED_FRAC",
    "GEN_TOKENS_PER_S",
    "GRADER_TIMEOUTS",
    "GRADER_TIMEOUTS_KEY",
    "GRAD_NORM",
    "KEPT_FRAC",
    "KL",
    "KL_TO_ROLLOUT",
    "LOSS",
    "LOSS_EPOCH",
    "LOSS_STEP",
    "LR",
    "MEMORY",
    "NLL_PER_TOKEN",
    "PEAK_GIB",
    "PEAK_RSS_GIB",
    "PER_RECORD",
    "PG_LOSS",
    "PRODUCER_IDLE_S",
    "REGENERATED",
    "RESPONSE_TOKENS",
    "REWARD",
    "REWARD_STD_IN_GROUP",
    "ROLLOUT",
    "ROLLOUT_ACCURACY",
    "ROLLOUT_ENTROPY",
    "ROLLOUT_FRACTION",
    "ROLLOUT_LENGTH",
    "ROLLOUT_S",
    "ROUND_SAMPLES_PER_S",
    "ROUND_TOKENS_PER_S",
    "STALENESS_MAX",
    "STALENESS_MEAN",
    "TIME",
    "TOKENS_PER_S",
    "TOKEN_ENTROPY",
    "TOOL_CALLS",
    "TOOL_CALL_RATE",
    "TOOL_ERRORS",
    "TRAIN",
    "TRAINER_WAIT_S",
    "TRAIN_S",
    "TRAIN_TOKENS_PER_S",
    "TURNS",
    "VAL",
    "VAL_ACCURACY",
    "VAL_ENTROPY",
    "VAL_LENGTH",
    "WEIGHT_SYNC_S",
    "ZERO_VARIANCE_GROUP_FRAC",
    "mean",
    "prefixed",
    "summarize_records",
]

ROLLOUT, VAL, TRAIN, TIME, MEMORY = "rollout", "val", "train", "time", "memory"

# train/: the loss and the optimizer (GRPO's loss adds train/<key> of lit_align.losses.policy_loss)
LOSS = "train/loss"
LOSS_EPOCH = "train/loss_epoch"  # SFT: the epoch mean
LOSS_STEP = "train/loss_step"  # what Lightning calls LOSS when it is logged per epoch too
PG_LOSS = "train/pg_loss"
KL = "train/kl"  # to the reference policy (kl_coef > 0)
CLIP_FRAC = "train/clip_frac"
GRAD_NORM = "train/grad_norm"
LR = "train/lr"
TOKENS_PER_S = "train/tokens_per_s"
TOKEN_ENTROPY = "train/token_entropy"
NLL_PER_TOKEN = "train/nll_per_token"
RESPONSE_TOKENS = "train/response_tokens"
# rollout/: a round's samples (plus rollout/<key> of summarize_records and the evaluator)
REWARD = "rollout/reward"
ROLLOUT_ACCURACY = "rollout/accuracy"
ROLLOUT_ENTROPY = "rollout/token_entropy_mean"
ROLLOUT_LENGTH = "rollout/response_length_mean"
KEPT_FRAC = "rollout/kept_frac"  # samples that count in the loss after the filters
ZERO_VARIANCE_GROUP_FRAC = "rollout/zero_variance_group_frac"  # groups with equal rewards
REWARD_STD_IN_GROUP = "rollout/reward_std_in_group"
GEN_TOKENS_PER_S = "rollout/gen_tokens_per_s"
# rollout/: multi-turn episodes (a round with an environment)
TURNS = "rollout/turns_per_episode"
TOOL_CALLS = "rollout/tool_calls_per_episode"
TOOL_CALL_RATE = "rollout/tool_call_episode_frac"  # episodes with at least one tool call
TOOL_ERRORS = "rollout/tool_errors"  # rollout/tool_errors/<kind>: a round's count of each kind
ENVIRONMENT_TOKENS = "rollout/environment_tokens_per_episode"
EPISODE_TRUNCATED_FRAC = "rollout/episode_truncated_frac"
# val/: validation by generation (val/<key> of PER_RECORD)
VAL_ACCURACY = "val/accuracy"
VAL_ENTROPY = "val/token_entropy"
VAL_LENGTH = "val/response_length"
# ei/: an expert-iteration step's kept set
EI_KEPT = "ei/kept"
EI_KEPT_FRACTION = "ei/kept_fraction"
EI_SOLVED_FRAC = "ei/questions_solved_frac"
EI_UNSOLVED = "ei/questions_without_correct"
# time/ and memory/
TRAIN_TOKENS_PER_S = "time/train_tokens_per_s"
PEAK_GIB = "memory/peak_gib"  # CUDA
PEAK_RSS_GIB = "memory/peak_rss_gib"  # CPU
WEIGHT_SYNC_S = "time/weight_sync_s"  # seconds to push the policy's weights into the engine
ROLLOUT_S = "time/rollout_s"  # seconds the engine spent generating a round
TRAIN_S = "time/train_s"  # seconds of a round's optimizer steps
ROLLOUT_FRACTION = "time/rollout_fraction"
ENGINE_MISMATCH = "train/engine_logprob_mismatch"  # nats/token, engine vs trainer, same weights
KL_TO_ROLLOUT = "train/kl_to_rollout"  # k3 KL of the policy to the one that sampled the round
# async/: rounds generated ahead of training (max_staleness >= 1), per round
STALENESS_MEAN = "async/staleness_mean"  # optimizer steps from the sampling weights to training
STALENESS_MAX = "async/staleness_max"
TRAINER_WAIT_S = "async/trainer_wait_s"  # seconds training waited for this round's rollouts
PRODUCER_IDLE_S = "async/producer_idle_s"  # seconds the producer sat idle before its next job
REGENERATED = "async/regenerated_samples"  # samples past the staleness bound, made again
ROUND_SAMPLES_PER_S = "async/samples_per_s"  # trained samples / seconds since the last round start
ROUND_TOKENS_PER_S = "async/tokens_per_s"  # their sampled tokens / the same seconds
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


def response_text(record: Mapping[str, Any]) -> str:
    """What the model wrote in a graded record: its response, or for a multi-turn episode the
    whole transcript, one ``[role name]`` header per message (tool results included)."""
    transcript = record.get("transcript")
    if not transcript:
        return str(record.get("response", ""))
    parts = []
    for m in transcript:
        who = m.get("role", "?") + (f" {m['name']}" if m.get("name") else "")
        parts.append(f"[{who}] {m.get('content', '')}")
    return "\n".join(parts)


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
