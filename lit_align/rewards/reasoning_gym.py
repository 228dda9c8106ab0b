"""reasoning-gym tasks graded by their own scorers.

reasoning-gym (Stojanovski et al. 2025, https://github.com/open-thought/reasoning-gym) generates
procedural reasoning problems by seed, each with a scorer ``score_answer(answer, entry) -> float``
in [0, 1] that reads the generated entry (its oracle answer and metadata). The data source
(:mod:`lit_align.data.reasoning_gym`) hands each example's ground truth over as a
:class:`GymAnswer`: the oracle answer as text, carrying its entry; :class:`ReasoningGymEvaluator`
extracts the model's answer and runs the task's scorer in the grading sandbox (scorers parse
model output; some through sympy), with the sandbox's time and memory limits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lit_align.rewards.evaluators import RewardEvaluator
from lit_align.rewards.formats import extract_tagged_answer
from lit_align.rewards.normalize import last_boxed
from lit_align.rewards.sandbox import worker_pool

__all__ = ["GymAnswer", "ReasoningGymEvaluator", "entry_json"]

AnswerFormat = Literal["answer_tag", "boxed"]


class GymAnswer(str):
    """A reasoning-gym ground truth: the oracle answer as text (what records, logs and
    string-based graders see), with the generated ``entry`` and the ``task`` whose scorer
    grades it."""

    entry: dict[str, Any]
    task: str

    def __new__(cls, answer: str, entry: dict[str, Any], task: str) -> GymAnswer:
        made = super().__new__(cls, answer)
        made.entry, made.task = entry, task
        return made

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers and DDP pickle it
        return (GymAnswer, (str(self), self.entry, self.task))


_EXTRACT = {
    "answer_tag": lambda text: extract_tagged_answer(text)[1],
    "boxed": last_boxed,
}


class ReasoningGymEvaluator(RewardEvaluator):
    """Scores answers with the reasoning-gym task's own scorer (partial credit in [0, 1] where
    the task gives it); ``reasoning_gym:`` sources pick it by default.

    Components: ``format_reward`` (an answer could be extracted) and ``answer_reward`` (the
    task's score); the reward is the score. An answer is correct when it scores 1.

    Args:
        answer_format: where the answer is: ``answer_tag`` (the last ``<answer>…</answer>``: the
            r1_zero, demo and gsm8k_chat formats, and reasoning-gym's own convention) or
            ``boxed`` (the last ``\\boxed{}``: question_only).
        timeout_s: limit for scoring one answer (the worker is killed past it; score 0).
    """

    component_names = ("format_reward", "answer_reward")
    total_weights = (0.0, 1.0)
    format_component = "format_reward"
    correct_component = "answer_reward"

    def __init__(self, answer_format: AnswerFormat = "answer_tag", timeout_s: float = 4.0) -> None:
        if answer_format not in _EXTRACT:
            raise ValueError(
                f"unknown answer_format {answer_format!r}; accepted values: {', '.join(_EXTRACT)}"
            )
        self.answer_format = answer_format
        self.timeout_s = timeout_s

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence[Any]
    ) -> Tensor:
        for answer in answers:
            if not isinstance(answer, GymAnswer):
                raise TypeError(
                    f"ReasoningGymEvaluator grades reasoning_gym:<task> sources only; ground "
                    f"truth {str(answer)[:40]!r} comes from another source: use that source's "
                    "evaluator (the default when evaluator is unset)"
                )
        extracted = [_EXTRACT[self.answer_format](c) for c in completions]
        tasks = [
            {"task": gold.task, "answer": text, "entry": gold.entry}
            for text, gold in zip(extracted, answers, strict=True)
            if text is not None
        ]
        pool = worker_pool(
            "lit_align.rewards._gym_worker",
            timeout_s=self.timeout_s,
            failed=0.0,
            num_workers=int(os.environ.get("LIT_ALIGN_GRADER_WORKERS", "0")) or None,
        )
        scores = iter(pool.run_many(tasks))
        rows = [[0.0, 0.0] if text is None else [1.0, float(next(scores))] for text in extracted]
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)

    def is_correct(self, row: dict[str, float]) -> bool:
        return row["answer_reward"] >= 1.0

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        correct = (scores[:, 1] >= 1.0).float().mean().item() if scores.numel() else 0.0
        return {"accuracy": correct}


def entry_json(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` as plain JSON values (what the sandboxed scorer receives, and what records
    hold): tuples become lists, anything else that JSON cannot hold becomes its text."""
    return json.loads(json.dumps(entry, default=str))
