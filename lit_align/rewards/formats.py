"""Response formats and their reward functions (r1_zero, question_only, GSM8K XML)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from lit_align.rewards.equivalence import GroundTruth, grade_many
from lit_align.rewards.normalize import last_boxed

__all__ = [
    "extract_gsm8k_xml_answer",
    "extract_question_only_answer",
    "extract_r1_zero_answer",
    "question_only_reward_fn",
    "question_only_rewards",
    "r1_zero_reward_fn",
    "r1_zero_rewards",
]

RewardDict = dict[str, float]


def extract_r1_zero_answer(response: str) -> tuple[bool, str | None]:
    """(well formatted, answer) of an r1_zero response.

    Well formatted: contains ``</think> <answer>`` and ``</answer>``. The answer is the text inside
    the last ``<answer>…</answer>``, or its last ``\\boxed{}`` content when it has one.
    """
    if "</think> <answer>" not in response or "</answer>" not in response:
        return False, None
    start = response.rfind("<answer>")
    end = response.find("</answer>", start)
    if start < 0 or end < 0:  # the last <answer> is never closed
        return False, None
    answer = response[start + len("<answer>") : end]
    if "\\boxed" in answer or "\\fbox" in answer:
        answer = last_boxed(answer)
    return True, answer


def extract_question_only_answer(response: str) -> tuple[bool, str | None]:
    """(has a boxed answer, its content): the question_only format answers in the last \\boxed{}."""
    answer = last_boxed(response)
    return answer is not None, answer


def extract_tagged_answer(response: str) -> tuple[bool, str | None]:
    """(has a closed answer tag, its text): the last ``<answer>…</answer>``, stripped (the
    answer_tag format of the short chat demo, and reasoning-gym's convention)."""
    start = response.rfind("<answer>")
    end = response.find("</answer>", start)
    if start < 0 or end < 0:
        return False, None
    return True, response[start + len("<answer>") : end].strip()


def extract_gsm8k_xml_answer(response: str) -> str | None:
    """Text inside the last ``<answer>…</answer>`` of the reasoning/answer XML format, stripped."""
    start = response.rfind("<answer>")
    if start < 0:
        return None
    end = response.find("</answer>", start)
    body = response[start + len("<answer>") : end if end >= 0 else None]
    return body.strip()


def _rewards(
    formatted: list[bool], answers: list[str | None], truths: Sequence[GroundTruth]
) -> list[RewardDict]:
    to_grade = [i for i, a in enumerate(answers) if formatted[i] and a is not None]
    verdicts = grade_many([(answers[i], truths[i]) for i in to_grade])
    correct = dict(zip(to_grade, verdicts, strict=True))
    out = []
    for i, fmt in enumerate(formatted):
        hit = float(correct.get(i, False))
        # Format alone earns nothing (the answer reward is the reward), to avoid format hacking.
        out.append({"format_reward": float(fmt), "answer_reward": hit, "reward": hit})
    return out


def r1_zero_rewards(
    responses: Sequence[str], ground_truths: Sequence[GroundTruth]
) -> list[RewardDict]:
    """Batched :func:`r1_zero_reward_fn`: one sandbox round trip for the whole batch."""
    parsed = [extract_r1_zero_answer(r) for r in responses]
    return _rewards([p[0] for p in parsed], [p[1] for p in parsed], ground_truths)


def question_only_rewards(
    responses: Sequence[str], ground_truths: Sequence[GroundTruth]
) -> list[RewardDict]:
    """Batched :func:`question_only_reward_fn`."""
    parsed = [extract_question_only_answer(r) for r in responses]
    return _rewards([p[0] for p in parsed], [p[1] for p in parsed], ground_truths)


def answer_tag_rewards(
    responses: Sequence[str], ground_truths: Sequence[GroundTruth]
) -> list[RewardDict]:
    """Rewards of answers in the last ``<answer>…</answer>`` (no ``</think>`` needed)."""
    parsed = [extract_tagged_answer(r) for r in responses]
    return _rewards([p[0] for p in parsed], [p[1] for p in parsed], ground_truths)


def r1_zero_reward_fn(response: str, ground_truth: GroundTruth) -> RewardDict:
    """``{"format_reward", "answer_reward", "reward"}`` of one r1_zero response (reward = answer)."""
    return r1_zero_rewards([response], [ground_truth])[0]


def question_only_reward_fn(response: str, ground_truth: GroundTruth) -> RewardDict:
    """``{"format_reward", "answer_reward", "reward"}`` of one question_only response."""
    return question_only_rewards([response], [ground_truth])[0]


# ------------------------------------------------------------------ GSM8K XML-format components

_STRICT_XML = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
_SOFT_XML = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)


def strict_format_reward(response: str) -> float:
    """0.5 when the response is exactly ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n``."""
    return 0.5 if _STRICT_XML.match(response) else 0.0


def soft_format_reward(response: str) -> float:
    """0.5 when ``<reasoning>…</reasoning>`` is followed by ``<answer>…</answer>`` anywhere."""
    return 0.5 if _SOFT_XML.search(response) else 0.0


def xml_count_reward(response: str) -> float:
    """Up to 0.5: 0.125 per well-placed tag, minus 0.001 per character after the answer."""
    score = 0.0
    if response.count("<reasoning>\n") == 1:
        score += 0.125
    if response.count("\n</reasoning>\n") == 1:
        score += 0.125
    if response.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(response.split("\n</answer>\n")[-1]) * 0.001
    if response.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(response.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def integer_answer_reward(answer: str | None) -> float:
    """0.5 when the extracted answer is an integer (digits, optionally signed)."""
    return 0.5 if answer is not None and re.fullmatch(r"-?\d+", answer) else 0.0
