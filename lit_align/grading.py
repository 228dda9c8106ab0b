"""Graded samples: one record per completion, built in one place for rollouts, validation and
``lit_align eval``.

A record is a plain dict (it goes to JSONL and TensorBoard as is): ``example_index``,
``sample_index``, ``prompt``, ``response``, ``ground_truth``, the evaluator's components and total
``reward``, ``formatted``, ``correct``, ``length`` (tokens), ``mean_entropy`` and ``finish_reason``;
multi-turn episodes add ``transcript``: the model's turns and the environment's messages, in order
(``response`` is the last turn, the one graded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.engines.base import Completion
from lit_align.environments.episodes import Episode
from lit_align.metrics import GRADER_TIMEOUTS_KEY
from lit_align.rewards.evaluators import RewardEvaluator
from lit_align.rewards.sandbox import timeouts_in_this_thread

__all__ = ["grade_completions", "grade_episodes"]

log = logging.getLogger(__name__)


def grade_completions(
    evaluator: RewardEvaluator,
    prompts: Sequence[Any],
    answers: Sequence[Any],
    completions: Sequence[Completion],
    n: int = 1,
    chunk: int | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], Tensor, dict[str, float]]:
    """Grade completions (prompt-major, ``n`` per prompt) against their prompts' answers.

    Args:
        evaluator: scores each completion.
        prompts: the prompts the completions' ``prompt_index`` refers to.
        answers: their ground truths, aligned with ``prompts``.
        completions: engine output.
        n: samples per prompt (``sample_index`` is the position in the group).
        chunk: completions per evaluator call (None: all at once).
        progress: show a progress bar over the chunks.

    Returns:
        (records, scores (N, F) components, the evaluator's reward metrics over all N, with
        ``grader_timeouts``: answers the math grader scored 0 for lack of time, warned about).
    """
    timeouts_before = timeouts_in_this_thread()
    rep_prompts = [prompts[c.prompt_index] for c in completions]
    rep_answers = [answers[c.prompt_index] for c in completions]
    texts = [c.text for c in completions]
    size = chunk or max(len(completions), 1)
    starts: Any = range(0, len(completions), size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="grade", unit="chunk")
    parts = [
        evaluator.compute_rewards(
            rep_prompts[i : i + size], texts[i : i + size], rep_answers[i : i + size]
        )[0]
        for i in starts
    ]
    scores = torch.cat(parts) if parts else torch.zeros(0, len(evaluator.component_names))
    records = [
        {
            "example_index": c.prompt_index,
            "sample_index": j % n,
            "prompt": rep_prompts[j],
            "response": c.text,
            "ground_truth": rep_answers[j],
            **row,
            "formatted": evaluator.is_formatted(row),
            "correct": evaluator.is_correct(row),
            "length": len(c.token_ids),
            "mean_entropy": c.mean_entropy,
            "finish_reason": c.finish_reason,
        }
        for j, (c, row) in enumerate(zip(completions, evaluator.breakdown(scores), strict=True))
    ]
    lost = timeouts_in_this_thread() - timeouts_before
    if lost:
        log.warning(
            "%d of %d answers were scored 0 because grading ran out of time (per-answer limit "
            "LIT_ALIGN_GRADER_TIMEOUT_S, batch budget LIT_ALIGN_GRADER_BUDGET_S): their rewards "
            "may be wrong. A loaded machine or very hard answers; raise the limits or add "
            "workers (LIT_ALIGN_GRADER_WORKERS).",
            lost,
            len(completions),
        )
    return records, scores, {**evaluator.reward_metrics(scores), GRADER_TIMEOUTS_KEY: float(lost)}


def grade_episodes(
    evaluator: RewardEvaluator,
    prompts: Sequence[Any],
    answers: Sequence[Any],
    episodes: Sequence[Episode],
    n: int = 1,
    chunk: int | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], Tensor, dict[str, float]]:
    """:func:`grade_completions` of episodes (each graded on its last turn); the records of
    episodes in which the environment answered also hold their ``transcript``."""
    completions = [e.completion() for e in episodes]
    records, scores, metrics = grade_completions(
        evaluator, prompts, answers, completions, n, chunk, progress
    )
    for record, episode in zip(records, episodes, strict=True):
        if episode.replies:
            record["transcript"] = episode.transcript()
    return records, scores, metrics
