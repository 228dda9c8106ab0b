"""One rollout round as one function: generate → grade → group advantages → filters.

:func:`run_round` returns a :class:`Round`: the samples the loss needs, one graded record per
sample and the round's metrics. GRPO trains on its samples' advantages; expert iteration can keep
the correct ones; both log the same metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, get_args

import torch

from lit_align.advantages import BaselineType, constant_groups, group_advantages
from lit_align.engines.base import RolloutEngine, SamplingConfig
from lit_align.environments.base import Environment
from lit_align.environments.episodes import episode_metrics, run_episodes
from lit_align.grading import grade_episodes
from lit_align.metrics import (
    GEN_TOKENS_PER_S,
    GRADER_TIMEOUTS,
    GRADER_TIMEOUTS_KEY,
    KEPT_FRAC,
    REWARD_STD_IN_GROUP,
    ROLLOUT,
    ROLLOUT_S,
    ZERO_VARIANCE_GROUP_FRAC,
    prefixed,
    summarize_records,
)
from lit_align.rewards.evaluators import RewardEvaluator

__all__ = [
    "ADVANTAGE_FIELDS",
    "AdvantageConfig",
    "EpisodeSettings",
    "Rollout",
    "Round",
    "run_round",
]


@dataclass
class Rollout:
    """One sampled completion (or multi-turn episode) with what the loss needs."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    reward: float
    rollout_log_probs: list[float]
    keep: bool  # counts in the loss (filters may drop it)
    truncated: bool
    # Per completion token, 1 if the model sampled it, 0 if an environment added it (tool
    # results: inputs only, never trained on). None: every token was sampled (single turn).
    sampled: list[int] | None = None
    # The optimizer step of the weights that sampled it (the engine's weight_version): every
    # token of a round comes from one version, since weights never change during a round.
    version: int | None = None

    @property
    def sampled_tokens(self) -> int:
        """Tokens that count in the loss's token normalizer."""
        return sum(self.sampled) if self.sampled is not None else len(self.completion_ids)


@dataclass(frozen=True)
class AdvantageConfig:
    """Group advantages and the filters of a round: one block (``data.init_args.advantages``
    in a config), validated when it is built.

    Attributes:
        normalize_by_std: divide by the group's std (GRPO); off is Dr. GRPO.
        eps: added to the group std.
        baseline: ``mean`` (GRPO) or ``leave_one_out`` (RLOO).
        drop_zero_variance_groups: leave groups whose rewards are all equal out of the loss.
        mask_truncated: leave completions that hit the token budget out of the loss (DAPO's
            overlong filtering); they still count in their group's advantages.
    """

    normalize_by_std: bool = True
    eps: float = 1e-6
    baseline: BaselineType = "mean"
    drop_zero_variance_groups: bool = False
    mask_truncated: bool = False

    def __post_init__(self) -> None:
        if self.baseline not in get_args(BaselineType):
            raise ValueError(
                f"unknown advantages.baseline {self.baseline!r}; accepted values: "
                f"{', '.join(get_args(BaselineType))}"
            )
        if self.eps < 0:
            raise ValueError(f"advantages.eps must be >= 0 (e.g. 1e-6), got {self.eps}")


ADVANTAGE_FIELDS = frozenset(f.name for f in fields(AdvantageConfig))


@dataclass
class EpisodeSettings:
    """What a multi-turn round needs besides the engine: the environment, the data rows it
    reads, the tokenizer that renders its messages, the episode's token budget."""

    environment: Environment | None = None
    examples: Sequence[Any] | None = None
    tokenizer: Any = None
    max_total_tokens: int | None = None


@dataclass
class Round:
    """A generated, graded round: ``samples`` and ``records`` are aligned, prompt-major."""

    samples: list[Rollout]
    records: list[dict[str, Any]]
    metrics: dict[str, float] = field(default_factory=dict)


def run_round(
    engine: RolloutEngine,
    evaluator: RewardEvaluator,
    prompts: Sequence[str],
    prompt_ids: Sequence[list[int]],
    answers: Sequence[Any],
    sampling: SamplingConfig,
    advantages: AdvantageConfig | None = None,
    episodes: EpisodeSettings | None = None,
) -> Round:
    """Generate ``sampling.n`` episodes per prompt (one completion each, by default), grade
    them, compute group advantages.

    The engine is woken for generation and put back to sleep before grading. ``episodes``: the
    environment that answers between turns and what it needs (multi-turn rounds).
    """
    options = advantages or AdvantageConfig()
    setting = episodes or EpisodeSettings()
    version = engine.weight_version
    engine.wake_up()
    start = time.perf_counter()
    done = run_episodes(
        engine, prompt_ids, sampling, setting.environment, setting.examples, setting.tokenizer,
        setting.max_total_tokens,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    engine.sleep()
    completions = [e.completion() for e in done]

    G = sampling.n
    records, scores, reward_metrics = grade_episodes(evaluator, prompts, answers, done, G)
    timeouts = reward_metrics.pop(GRADER_TIMEOUTS_KEY)
    totals = evaluator.total(scores)  # (N,)
    adv, adv_metrics = group_advantages(
        totals, G, options.eps, options.normalize_by_std, options.baseline
    )
    zero_var = constant_groups(totals, G)  # (N/G,)
    samples = []
    for k, c in enumerate(completions):
        truncated = c.finish_reason == "length"
        dropped = (options.drop_zero_variance_groups and bool(zero_var[k // G])) or (
            options.mask_truncated and truncated
        )
        samples.append(
            Rollout(
                list(prompt_ids[c.prompt_index]),
                c.token_ids,
                float(adv[k]),
                float(totals[k]),
                list(c.log_probs),
                not dropped,
                truncated,
                done[k].sampled if done[k].environment_tokens else None,
                version,
            )
        )
    metrics = _round_metrics(samples, records, reward_metrics, adv_metrics, seconds)
    if setting.environment is not None:  # turns, tool calls, environment tokens, truncation
        metrics.update(episode_metrics(done))
    metrics[GRADER_TIMEOUTS] = timeouts
    return Round(samples, records, metrics)


def _round_metrics(
    samples: list[Rollout],
    records: list[dict[str, Any]],
    reward_metrics: dict[str, float],
    adv_metrics: dict[str, torch.Tensor],
    seconds: float,
) -> dict[str, float]:
    summary = summarize_records(records)
    summary.pop("reward_mean")  # the evaluator's reward metrics hold it (rollout/reward)
    metrics = prefixed(ROLLOUT, {**reward_metrics, **summary})
    tokens = sum(s.sampled_tokens for s in samples)
    metrics.update(
        {
            KEPT_FRAC: sum(s.keep for s in samples) / max(len(samples), 1),
            ZERO_VARIANCE_GROUP_FRAC: float(adv_metrics["zero_variance_group_frac"]),
            REWARD_STD_IN_GROUP: float(adv_metrics["reward_std_in_group"]),
            ROLLOUT_S: seconds,
            GEN_TOKENS_PER_S: tokens / max(seconds, 1e-9),
        }
    )
    return metrics
