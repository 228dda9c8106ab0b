"""Ranked scoring: the judge orders a group's stories best to worst in one reply, and each story's
score is its place, spread evenly from high (first) to low (last).

For judges whose absolute scores collapse (every story "3"): a ranking cannot tie, so every
group gives GRPO a signal. Whether the order means anything is the judge's quality: the
agreement of repeated rankings (``lit_align judge-check --scoring ranked``) measures it.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from typing import Any

__all__ = ["RANK_RUBRIC", "parse_ranking", "rank_prompt", "rank_schema", "rank_scores"]

RANK_RUBRIC = """You are a demanding literary critic. Writers were given the opening line below and \
each wrote a one-paragraph story that starts with it. Rank the stories from best to worst, judging \
{criteria} together.

Opening line: {opening_line}

{stories}

Reply with JSON only: the labels of all {count} stories, best first, for example {example}"""


def labels(count: int) -> list[str]:
    if not 1 <= count <= 26:
        raise ValueError(f"ranked scoring labels up to 26 stories per group, got {count}")
    return list(string.ascii_uppercase[:count])


def rank_prompt(opening_line: str, stories: Sequence[str], criteria: Sequence[str]) -> str:
    names = labels(len(stories))
    body = "\n\n".join(f"Story {n}:\n{s}" for n, s in zip(names, stories, strict=True))
    return RANK_RUBRIC.format(
        criteria=", ".join(criteria),
        opening_line=opening_line,
        stories=body,
        count=len(stories),
        example=json.dumps({"ranking": names[::-1]}),
    )


def rank_schema(count: int) -> dict[str, Any]:
    """JSON schema of a ranking reply (that it is a permutation is checked after parsing)."""
    names = labels(count)
    ranking = {"type": "array", "items": {"enum": names}, "minItems": count, "maxItems": count}
    return {
        "type": "object",
        "properties": {"ranking": ranking},
        "required": ["ranking"],
        "additionalProperties": False,
    }


def parse_ranking(text: str | None, count: int) -> list[int] | None:
    """Story indices best first, from ``{"ranking": [...]}`` or ``C > A > B``; None unless every
    story appears exactly once."""
    if not text:
        return None
    names = labels(count)
    order: list[str] | None = None
    for match in re.finditer(r"\{[^{}]*\}", text[:20_000]):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("ranking"), list):
            order = [str(x).strip().removeprefix("Story ").strip() for x in obj["ranking"]]
            break
    if order is None:
        order = re.findall(r"\b([A-Z])\b", text)
    if sorted(order) != names:
        return None
    return [names.index(x) for x in order]


def rank_scores(order: Sequence[int], low: float, high: float) -> list[float]:
    """Scores of a group's stories (by index) from their places: first ``high``, last ``low``."""
    count = len(order)
    scores = [0.0] * count
    for place, index in enumerate(order):
        scores[index] = high - (high - low) * place / (count - 1) if count > 1 else high
    return scores
