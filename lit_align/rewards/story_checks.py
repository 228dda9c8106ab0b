"""Rule-based checks of a story, as extra reward components beside an LLM judge's scores.

Judges reward length and the policy finds it; a repeated phrase can read as "engaging" to a small
judge. Each check maps (story, opening line) to a number: a bonus in [0, 1] or a penalty in [-1, 0].
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["CHECKS", "length_penalty", "repetition_penalty", "starts_with_line"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def starts_with_line(story: str, opening_line: str, max_words: int = 150) -> float:
    """1.0 when the story begins with the opening line (case, spacing and punctuation aside)."""
    line = _words(opening_line)
    return 1.0 if line and _words(story)[: len(line)] == line else 0.0


def repetition_penalty(story: str, opening_line: str = "", max_words: int = 150) -> float:
    """Minus the fraction of the story's word trigrams that repeat an earlier one (0: none)."""
    words = _words(story)
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return -(len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def length_penalty(story: str, opening_line: str = "", max_words: int = 150) -> float:
    """Minus the story's words beyond ``max_words``, as a fraction of ``max_words`` (capped at 1)."""
    return -min(1.0, max(0, len(_words(story)) - max_words) / max_words)


CHECKS: dict[str, Callable[[str, str, int], float]] = {
    "starts_with_line": starts_with_line,
    "repetition": repetition_penalty,
    "length": length_penalty,
}
