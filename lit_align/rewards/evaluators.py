"""Reward evaluators: turn (prompts, completions, answers) into an (N, F) tensor of reward components.

An evaluator names its F components and how they sum to the scalar reward; YAML configs pick one
by ``class_path``::

    evaluator:
      class_path: lit_align.rewards.GSM8kEvaluator
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lit_align.rewards import formats
from lit_align.rewards.equivalence import GroundTruth, grade_many

__all__ = ["GSM8kEvaluator", "MathEvaluator", "RewardEvaluator", "completion_text"]


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or the last message's ``content`` of a chat message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(
        f"completion must be a string or a list of chat messages, got {type(completion).__name__}"
    )


class RewardEvaluator(ABC):
    """Scores completions; subclasses set ``component_names`` and ``total_weights``.

    The scalar reward of a completion is ``components @ total_weights``.
    """

    component_names: tuple[str, ...] = ()
    total_weights: tuple[float, ...] = ()
    # Components that say "answer correct" and "well formatted" (None: not applicable).
    correct_component: str | None = None
    format_component: str | None = None

    @abstractmethod
    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence[Any]
    ) -> Tensor:
        """(N, F) float tensor of reward components, columns in ``component_names`` order."""

    def set_group_size(self, group_size: int) -> None:
        """Told by the DataModules that sample groups (GRPO, expert iteration) how many
        consecutive completions share a prompt. Evaluators that compare a prompt's completions
        with each other (the judge's ranking and within-group metrics) keep it; the rest ignore
        it."""
        return None

    def compute_rewards(
        self, prompts: Sequence[Any], completions: Sequence[Any], answers: Sequence[Any]
    ) -> tuple[Tensor, dict[str, float]]:
        """Score N completions.

        Args:
            prompts: N prompts (strings or chat message lists; repeated per sample).
            completions: N completions (strings or chat message lists).
            answers: N ground truths (or anything the evaluator needs per example).

        Returns:
            ((N, F) components, metrics): the mean of each component, ``reward`` (mean total),
            ``reward_std`` and the evaluator's own metrics.
        """
        if not (len(prompts) == len(completions) == len(answers)):
            raise ValueError(
                f"prompts ({len(prompts)}), completions ({len(completions)}) and answers "
                f"({len(answers)}) must have the same length"
            )
        texts = [completion_text(c) for c in completions]
        scores = self.score(prompts, texts, answers)
        return scores, self.reward_metrics(scores)

    def reward_metrics(self, scores: Tensor) -> dict[str, float]:
        """The metrics of :meth:`compute_rewards` for (N, F) scores (e.g. concatenated chunks)."""
        total = self.total(scores)
        metrics = self.get_reward_breakdown(scores)
        metrics["reward"] = total.mean().item() if total.numel() else 0.0
        metrics["reward_std"] = total.std().item() if total.numel() > 1 else 0.0
        metrics.update(self.extra_metrics(scores))
        return metrics

    def total(self, scores: Tensor) -> Tensor:
        """(N,) scalar rewards from (N, F) components."""
        return scores @ torch.tensor(self.total_weights, dtype=scores.dtype)

    def get_reward_breakdown(self, scores: Tensor) -> dict[str, float]:
        """Mean of each component over the batch."""
        if scores.numel() == 0:
            return dict.fromkeys(self.component_names, 0.0)
        means = scores.mean(dim=0)
        return {name: means[i].item() for i, name in enumerate(self.component_names)}

    def breakdown(self, scores: Tensor) -> list[dict[str, float]]:
        """Per-example components and total."""
        totals = self.total(scores)
        return [
            {
                **{n: row[i].item() for i, n in enumerate(self.component_names)},
                "reward": totals[k].item(),
            }
            for k, row in enumerate(scores)
        ]

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        """Metrics beyond the component means (accuracy, …)."""
        return {}

    def is_correct(self, row: dict[str, float]) -> bool:
        """Whether one :meth:`breakdown` row counts as a correct answer."""
        return self.correct_component is not None and row[self.correct_component] > 0

    def is_formatted(self, row: dict[str, float]) -> bool:
        """Whether one :meth:`breakdown` row is well formatted."""
        return self.format_component is not None and row[self.format_component] > 0


class MathEvaluator(RewardEvaluator):
    """MATH-style rewards: format and answer, reward = answer (format alone earns nothing).

    Args:
        template: ``r1_zero`` (``</think> <answer> … </answer>``), ``question_only`` (last
            ``\\boxed{}``) or ``answer_tag`` (the last ``<answer>…</answer>``: ``demo_chat``).
    """

    component_names = ("format_reward", "answer_reward")
    total_weights = (0.0, 1.0)
    correct_component = "answer_reward"
    format_component = "format_reward"

    def __init__(
        self, template: Literal["r1_zero", "question_only", "answer_tag"] = "r1_zero"
    ) -> None:
        fns = {
            "r1_zero": formats.r1_zero_rewards,
            "question_only": formats.question_only_rewards,
            "answer_tag": formats.answer_tag_rewards,
        }
        if template not in fns:
            raise ValueError(f"unknown template {template!r}; accepted values: {', '.join(fns)}")
        self.template = template
        self._rewards = fns[template]

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence[GroundTruth]
    ) -> Tensor:
        rows = self._rewards(completions, answers)
        return torch.tensor(
            [[r["format_reward"], r["answer_reward"]] for r in rows], dtype=torch.float32
        ).reshape(-1, 2)

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        return {"accuracy": scores[:, 1].mean().item() if scores.numel() else 0.0}


class GSM8kEvaluator(RewardEvaluator):
    """GSM8K rewards for the XML format ``<reasoning>…</reasoning><answer>…</answer>``.

    Components: correctness 2.0 (mathematical equality with the gold answer), integer answer 0.5,
    strict format 0.5, soft format 0.5, XML tag count up to 0.5. A perfect completion scores 4.0.
    """

    component_names = ("correctness", "integer_answer", "strict_format", "soft_format", "xml_count")
    total_weights = (1.0, 1.0, 1.0, 1.0, 1.0)
    correct_component = "correctness"
    format_component = "soft_format"

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence[GroundTruth]
    ) -> Tensor:
        extracted = [formats.extract_gsm8k_xml_answer(c) for c in completions]
        graded_idx = [i for i, a in enumerate(extracted) if a]
        verdicts = grade_many([(extracted[i], answers[i]) for i in graded_idx])
        correct = dict(zip(graded_idx, verdicts, strict=True))
        rows = [
            [
                2.0 if correct.get(i, False) else 0.0,
                formats.integer_answer_reward(extracted[i]),
                formats.strict_format_reward(c),
                formats.soft_format_reward(c),
                formats.xml_count_reward(c),
            ]
            for i, c in enumerate(completions)
        ]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        return {"accuracy": (scores[:, 0] > 0).float().mean().item() if scores.numel() else 0.0}
