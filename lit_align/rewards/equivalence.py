"""Mathematical answer equivalence that never hangs and never executes model text.

``grade(answer, ground_truth)`` normalizes both sides (see :mod:`.normalize`), decides by string
or number comparison when it can (most answers), and otherwise asks math-verify in the sandboxed
worker pool (:mod:`.sandbox`), under a hard per-answer time limit: first on the normalized
strings, then on the raw texts with math-verify's own extraction (LaTeX, then expressions), so
free-text answers grade as math-verify grades them. Numbers follow math-verify's rule: exact,
unless one side is written as a decimal, then equal when rounded to 6 places.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lit_align.rewards.normalize import (
    MAX_ANSWER_CHARS,
    is_free_text,
    last_boxed,
    normalize_answer,
    parse_number,
)
from lit_align.rewards.sandbox import GradingPool, get_pool, timeouts_in_this_thread

__all__ = ["GroundTruth", "grade", "grade_many"]

GroundTruth = str | int | float | Sequence[str | int | float]


# Sandbox verdicts by task (normalized answer, normalized gold, raw answer, raw gold): GRPO groups
# repeat answers often.
_VERDICT_CACHE_SIZE = 65_536
_VERDICTS: dict[tuple[str, str, str, str], bool] = {}
# math-verify extracts from the end of a text; a longer raw answer is cut to its tail.
_RAW_TAIL_CHARS = 4000
# math-verify's default float_rounding: a decimal equals a value that rounds to it.
_DECIMALS = 6


def _golds(ground_truth: GroundTruth) -> list[str]:
    if isinstance(ground_truth, (str, int, float)):
        return [str(ground_truth)]
    return [str(g) for g in ground_truth]


def _prepare(answer: str) -> str | None:
    """Normalized answer, or None when it is empty or too long to be a real answer."""
    if not isinstance(answer, str):
        return None
    boxed = last_boxed(answer) if len(answer) <= 50 * MAX_ANSWER_CHARS else None
    candidate = boxed if boxed is not None else answer
    if len(candidate) > MAX_ANSWER_CHARS:
        return None
    normalized = normalize_answer(candidate)
    return normalized or None


def _fast(answer: str, gold: str) -> bool | None:
    """True/False when strings or numbers decide; None when sympy must."""
    if answer == gold:
        return True
    a, g = parse_number(answer), parse_number(gold)
    if a is not None and g is not None:
        if a == g:
            return True
        if "." in answer or "." in gold:  # a decimal: equal when both round alike
            return round(a, _DECIMALS) == round(g, _DECIMALS)
        return False
    return None


def _gold_norm(gold: str) -> str:
    """Normalized gold, or "" when it holds several boxed answers (all of them must be matched,
    which only math-verify's extraction of the raw gold does)."""
    if gold.count("\\boxed") + gold.count("\\fbox") > 1:
        return ""
    return normalize_answer(gold)


def grade_many(
    pairs: Iterable[tuple[str, GroundTruth]], pool: GradingPool | None = None
) -> list[bool]:
    """Grade many (answer, ground truth) pairs; one sandbox round trip for all undecided ones.

    Args:
        pairs: (model answer, ground truth) where the ground truth is a string, a number or a list
            of acceptable answers (any match counts).
        pool: the worker pool; the process-wide one by default.

    Returns:
        One bool per pair. Never raises for any content of the answers.
    """
    pairs = list(pairs)
    results = [False] * len(pairs)
    slow: list[tuple[int, tuple[str, str, str, str]]] = []  # (pair index, task) for the sandbox
    for idx, (answer, ground_truth) in enumerate(pairs):
        if not isinstance(answer, str) or not answer.strip():
            continue
        prepared = _prepare(answer) or ""
        tail = answer.replace("\x00", "")[-_RAW_TAIL_CHARS:]
        free_text = is_free_text(answer)
        for gold in _golds(ground_truth):
            gold_norm = _gold_norm(gold)
            decided = _fast(prepared, gold_norm) if prepared and gold_norm else None
            if decided:
                results[idx] = True
                break
            # Prose or delimited math (or a gold of several boxed answers): math-verify also
            # extracts the answer from the raw text.
            raw = tail if free_text or not gold_norm else ""
            if decided is None and ((prepared and gold_norm) or raw):
                raw_gold = gold[-_RAW_TAIL_CHARS:] if raw else ""
                slow.append((idx, (prepared, gold_norm, raw, raw_gold)))
    slow = [s for s in slow if not results[s[0]]]
    unknown = list(dict.fromkeys(task for _, task in slow if task not in _VERDICTS))
    fresh: dict[tuple[str, str, str, str], bool] = {}
    if unknown:
        before = timeouts_in_this_thread()
        fresh = dict(zip(unknown, (pool or get_pool()).verify_many(unknown), strict=True))
        lost = timeouts_in_this_thread() - before
        if len(_VERDICTS) + len(unknown) > _VERDICT_CACHE_SIZE:
            _VERDICTS.clear()
        # A False that may be a timeout is not cached: a later, less loaded call may decide it.
        _VERDICTS.update((t, v) for t, v in fresh.items() if v or not lost)
    for idx, task in slow:
        results[idx] = results[idx] or fresh.get(task, _VERDICTS.get(task, False))
    return results


def grade(answer: str, ground_truth: GroundTruth, pool: GradingPool | None = None) -> bool:
    """Whether ``answer`` is mathematically equal to ``ground_truth`` (or one of a list).

    Examples: ``grade("0.5", "\\\\frac{1}{2}")`` and ``grade("1,000", 1000)`` are True.
    """
    return grade_many([(answer, ground_truth)], pool=pool)[0]
