"""Grading throughput: lit_align's sandboxed grader vs math-verify called in-process.

Answers, for each gold of MATH500 and of the GSM8K test set: an r1_zero response with the gold
written plainly, one inside \\boxed{}, one in another surface form (``x = …``, ``\\dfrac``,
spaces), and one wrong answer (gold + 1). Both graders see the same answer strings, in the same
process, after a warm-up; lit_align's verdict cache is emptied before each timed run. Then one
GRPO-sized round: 512 MATH responses (128 problems × 4 forms) in one call, as a round grades them,
with the default batch budget; its time and its grading timeouts.

    python tests/bench/grading.py [path/to/shared/data]
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data"


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


def _golds(data: Path) -> dict[str, list[str]]:
    math = [json.loads(line)["answer"] for line in (data / "math/test500.jsonl").open()]
    gsm8k = [
        re.sub(r"[,$]", "", json.loads(line)["answer"].split("####")[-1]).strip()
        for line in (data / "gsm8k/test.jsonl").open()
    ]
    return {"MATH500": math, "GSM8K test": gsm8k}


def _cases(golds: list[str]) -> tuple[list[str], list[str], list[str], list[bool]]:
    answers, truths, expected = [], [], []
    for gold in golds:
        for text, ok in variants(gold):
            answers.append(text)
            truths.append(gold)
            expected.append(ok)
    responses = [f"reasoning </think> <answer> {a} </answer>" for a in answers]
    return answers, truths, responses, expected


def _ours(responses: list[str], truths: list[str]) -> tuple[list[bool], float]:
    from lit_align.rewards import equivalence, r1_zero_rewards

    equivalence._VERDICTS.clear()  # time the work, not the cache
    start = time.perf_counter()
    verdicts = [r["reward"] == 1.0 for r in r1_zero_rewards(responses, truths)]
    return verdicts, time.perf_counter() - start


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    from math_verify import parse, verify

    from lit_align.rewards import get_pool, r1_zero_rewards
    from lit_align.rewards.sandbox import timeouts_in_this_thread

    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    sets = _golds(data)
    # Warm-up: start the workers and both parsers (ANTLR builds its caches on first use).
    answers, truths, responses, _ = _cases(sets["MATH500"][:10])
    r1_zero_rewards(responses, truths)
    for a, g in zip(answers, truths, strict=True):
        verify(parse(f"${g}$"), parse(a))

    pool = get_pool()
    print(f"{pool.num_workers} sandbox workers; answers/s, correct verdicts, false positives")
    print(f"{'set':<12}{'grader':<34}{'answers':>8}{'answers/s':>10}{'correct':>9}{'false +':>9}")
    for name, golds in sets.items():
        answers, truths, responses, expected = _cases(golds)
        ours, t_ours = _ours(responses, truths)
        start = time.perf_counter()
        theirs = [
            bool(verify(parse(f"${g}$"), parse(a))) for a, g in zip(answers, truths, strict=True)
        ]
        t_theirs = time.perf_counter() - start
        n = len(answers)
        for grader_name, res, t in (
            ("lit_align (sandboxed, fast path)", ours, t_ours),
            ("math-verify in-process", theirs, t_theirs),
        ):
            right = sum(r == e for r, e in zip(res, expected, strict=True))
            false_pos = sum(r and not e for r, e in zip(res, expected, strict=True))
            print(f"{name:<12}{grader_name:<34}{n:>8}{n / t:>10.0f}{right:>9}{false_pos:>9}")
        print(f"{name:<12}speed ratio lit_align / math-verify: {t_theirs / t_ours:.1f}x")

    _, truths, responses, _ = _cases(sets["MATH500"][:128])
    before = timeouts_in_this_thread()
    _, seconds = _ours(responses, truths)
    print(
        f"a round of {len(responses)} MATH answers: {seconds:.2f} s "
        f"(budget {pool.budget_s} s), grading timeouts {timeouts_in_this_thread() - before}; "
        f"pool stats {pool.stats}"
    )


if __name__ == "__main__":
    main()
