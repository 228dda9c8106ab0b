"""Grading throughput: lit_align's sandboxed grader vs math-verify called in-process.

Answers: for each MATH500 problem, an r1_zero response with the gold answer written plainly, one
inside \\boxed{}, one in another surface form (``x = …``, ``\\dfrac``, spaces), and one wrong
answer (gold + 1). Both graders see the same answer strings, in the same process, after a warm-up.

    python tests/bench/grading.py [path/to/test500.jsonl]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "math" / "test500.jsonl"


def variants(gold: str) -> list[tuple[str, bool]]:
    """(answer text, should be correct) for one gold answer."""
    from lit_align.rewards.normalize import normalize_answer, parse_number

    value = parse_number(normalize_answer(gold))
    if value is None:
        wrong = f"{gold}+1"
    elif value.denominator == 1:
        wrong = str(value + 1)
    else:
        wrong = f"\\frac{{{(value + 1).numerator}}}{{{(value + 1).denominator}}}"
    alt = "x = " + gold.replace("\\frac", "\\dfrac").replace(",", ", ")
    return [(gold, True), (f"\\boxed{{{gold}}}", True), (alt, True), (wrong, False)]


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    from math_verify import parse, verify

    from lit_align.rewards import get_pool, r1_zero_rewards

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    golds = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    answers, truths, expected = [], [], []
    for gold in golds:
        for text, ok in variants(gold):
            answers.append(text)
            truths.append(gold)
            expected.append(ok)
    responses = [f"reasoning </think> <answer> {a} </answer>" for a in answers]

    # Warm-up: start the workers and both parsers (ANTLR builds its caches on first use).
    r1_zero_rewards(responses[:40], truths[:40])
    for a, g in zip(answers[:40], truths[:40], strict=True):
        verify(parse(f"${g}$"), parse(a))

    start = time.perf_counter()
    ours = [r["reward"] == 1.0 for r in r1_zero_rewards(responses, truths)]
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    theirs = [bool(verify(parse(f"${g}$"), parse(a))) for a, g in zip(answers, truths, strict=True)]
    t_theirs = time.perf_counter() - start

    n = len(answers)
    print(f"{n} MATH500 answers ({n // 4} problems x 4 forms), 2 sandbox workers")
    print(f"{'grader':<34}{'answers/s':>10}{'correct':>9}{'false +':>9}")
    for name, res, t in (
        ("lit_align (sandboxed, fast path)", ours, t_ours),
        ("math-verify in-process", theirs, t_theirs),
    ):
        right = sum(r == e for r, e in zip(res, expected, strict=True))
        false_pos = sum(r and not e for r, e in zip(res, expected, strict=True))
        print(f"{name:<34}{n / t:>10.0f}{right:>9}{false_pos:>9}")
    print(
        f"speed ratio lit_align / math-verify: {t_theirs / t_ours:.1f}x; pool stats {get_pool().stats}"
    )


if __name__ == "__main__":
    main()
