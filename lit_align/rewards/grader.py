"""Mathematical answer equivalence that never hangs and never executes model text.

``grade(answer, ground_truth)`` normalizes both sides (see :mod:`.normalize`), decides by string
or exact-number comparison when it can (most answers), and otherwise asks math-verify in the
sandboxed worker pool (:mod:`.sandbox`), under a hard per-answer time limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lit_align.rewards.normalize import MAX_ANSWER_CHARS, last_boxed, normalize_answer, parse_number
from lit_align.rewards.sandbox import GradingPool, get_pool

__all__ = ["GroundTruth", "grade", "grade_many"]

GroundTruth = str | int | float | Sequence[str | int | float]


# Sandbox verdicts by (normalized answer, normalized gold): GRPO groups repeat answers often.
_VERDICT_CACHE_SIZE = 65_536
_VERDICTS: dict[tuple[str, str], bool] = {}


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
    """True/False when strings or exact numbers decide; None when sympy must."""
    if answer == gold:
        return True
    a, g = parse_number(answer), parse_number(gold)
    if a is not None and g is not None:
        return a == g
    return None


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
    slow: list[tuple[int, str, str]] = []  # (pair index, answer, gold) for the sandbox
    for idx, (answer, ground_truth) in enumerate(pairs):
        prepared = _prepare(answer)
        if prepared is None:
            continue
        for gold in _golds(ground_truth):
            gold_norm = normalize_answer(gold)
            decided = _fast(prepared, gold_norm) if gold_norm else False
            if decided:
                results[idx] = True
                break
            if decided is None:
                slow.append((idx, prepared, gold_norm))
    slow = [s for s in slow if not results[s[0]]]
    unknown = list(dict.fromkeys((a, g) for _, a, g in slow if (a, g) not in _VERDICTS))
    if unknown:
        verdicts = (pool or get_pool()).verify_many(unknown)
        if len(_VERDICTS) + len(unknown) > _VERDICT_CACHE_SIZE:
            _VERDICTS.clear()
        _VERDICTS.update(zip(unknown, verdicts, strict=True))
    for idx, a, g in slow:
        results[idx] = results[idx] or _VERDICTS.get((a, g), False)
    return results


def grade(answer: str, ground_truth: GroundTruth, pool: GradingPool | None = None) -> bool:
    """Whether ``answer`` is mathematically equal to ``ground_truth`` (or one of a list).

    Examples: ``grade("0.5", "\\\\frac{1}{2}")`` and ``grade("1,000", 1000)`` are True.
    """
    return grade_many([(answer, ground_truth)], pool=pool)[0]
