"""Graders and reward evaluators (pure Python and torch; no Lightning).

- :func:`grade` / :func:`grade_many`: math equivalence, sandboxed and time-bounded.
- :func:`r1_zero_reward_fn`, :func:`question_only_reward_fn`: reward dicts ``{format_reward, answer_reward, reward}``.
- :class:`MathEvaluator`, :class:`GSM8kEvaluator`, :class:`JudgeEvaluator`: (N, F) components.
- judge backends: :class:`OpenAIChatJudge` (any OpenAI-compatible endpoint), :class:`ModelJudge`
  (a local frozen model), :class:`LocalJudge` (a callable), ``judge_server.ServedRuleJudge`` (a
  deterministic rule over HTTP, for CPU demos).
"""

from lit_align.rewards.equivalence import grade, grade_many
from lit_align.rewards.evaluators import GSM8kEvaluator, MathEvaluator, RewardEvaluator
from lit_align.rewards.formats import (
    question_only_reward_fn,
    question_only_rewards,
    r1_zero_reward_fn,
    r1_zero_rewards,
)
from lit_align.rewards.judge import JudgeEvaluator, LocalJudge, OpenAIChatJudge, parse_scores
from lit_align.rewards.local_judge import ModelJudge
from lit_align.rewards.sandbox import GradingPool, get_pool

__all__ = [
    "GSM8kEvaluator",
    "GradingPool",
    "JudgeEvaluator",
    "LocalJudge",
    "MathEvaluator",
    "ModelJudge",
    "OpenAIChatJudge",
    "RewardEvaluator",
    "get_pool",
    "grade",
    "grade_many",
    "parse_scores",
    "question_only_reward_fn",
    "question_only_rewards",
    "r1_zero_reward_fn",
    "r1_zero_rewards",
]
