"""Reading a judge's reply: scores per criterion from text (JSON, "Creativity: 4", "4/5",
"**4**", "four"), or probability-weighted from the reply's token log-probs (G-Eval)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

__all__ = ["parse_scores", "weighted_scores"]

_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_NUM = r"(\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")"


def _to_float(token: str) -> float:
    token = token.lower()
    return float(_WORDS[token]) if token in _WORDS else float(token)


def _from_json(text: str, criteria: Sequence[str]) -> dict[str, float] | None:
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        found = {c: lowered[c] for c in criteria if c in lowered}
        if not found:
            overall = next(
                (lowered[k] for k in ("score", "overall", "rating") if k in lowered), None
            )
            if overall is not None:
                found = dict.fromkeys(criteria, overall)
        try:
            return {c: _to_float(str(v)) for c, v in found.items()} or None
        except (ValueError, KeyError):
            continue
    return None


def _overall(text: str) -> float | None:
    patterns = (
        r"(?:score|rating|overall)\s*[:=]?\s*\**\s*" + _NUM,  # "Score: 4", "Rating = four"
        _NUM + r"\s*/\s*(?:5|10)\b",  # "4/5"
        r"\*\*\s*" + _NUM + r"\s*\*\*",  # "**4**"
        r"^\s*" + _NUM + r"\s*\.?\s*$",  # a bare "4" or "four"
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if match:
            return _to_float(match.group(1))
    return None


def parse_scores(
    text: str | None, criteria: Sequence[str], low: float = 1.0, high: float = 5.0
) -> dict[str, float] | None:
    """Scores per criterion from a judge reply, or None when it cannot be parsed.

    Tries JSON first, then ``criterion: N`` lines, then one overall score (``Score: 4``, ``4/5``,
    ``**4**``, ``four``) applied to every criterion. Values outside [low, high] are rejected.
    """
    if not text:
        return None
    text = text[:20_000]
    scores = _from_json(text, criteria) or {}
    for criterion in criteria:
        if criterion not in scores:
            match = re.search(re.escape(criterion) + r"\W{0,12}?" + _NUM, text, flags=re.IGNORECASE)
            if match:
                scores[criterion] = _to_float(match.group(1))
    if len(scores) < len(criteria):
        overall = _overall(text)
        if overall is None:
            return None
        scores = {c: scores.get(c, overall) for c in criteria}
    if any(not (low <= v <= high) for v in scores.values()):
        return None
    return scores


def weighted_scores(
    top_logprobs: Sequence[tuple[str, dict[str, float]]],
    criteria: Sequence[str],
    low: float = 1.0,
    high: float = 5.0,
) -> dict[str, float] | None:
    """Probability-weighted scores (G-Eval, Liu et al. 2023) from a JSON reply's token log-probs.

    For each criterion, the token where the reply writes its value (after ``"criterion":``) is
    found, and the score is the expected value of the integers low..high under the judge's
    distribution there (top alternatives, renormalized). None when a criterion is not found or
    none of its alternatives is a score.
    """
    joined = "".join(token for token, _ in top_logprobs)
    offsets, position = [], 0
    for token, _ in top_logprobs:
        offsets.append(position)
        position += len(token)
    scores = {}
    for criterion in criteria:
        match = re.search(r'"' + re.escape(criterion) + r'"\s*:\s*', joined, flags=re.IGNORECASE)
        if match is None:
            return None
        at = match.end()
        index = next(
            (i for i, o in enumerate(offsets) if o <= at < o + len(top_logprobs[i][0])), None
        )
        if index is None:
            return None
        probs: dict[int, float] = {}
        for token, logprob in top_logprobs[index][1].items():
            value = token.strip()
            if value.isdigit() and low <= int(value) <= high:
                probs[int(value)] = probs.get(int(value), 0.0) + math.exp(logprob)
        if not probs:
            return None
        scores[criterion] = sum(v * p for v, p in probs.items()) / sum(probs.values())
    return scores
