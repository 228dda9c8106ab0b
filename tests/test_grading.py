"""Grading: equivalence tables, normalization, reward functions, evaluators, real gold answers."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from lit_align.rewards import (
    GSM8kEvaluator,
    MathEvaluator,
    RewardEvaluator,
    grade,
    grade_many,
    question_only_reward_fn,
    r1_zero_reward_fn,
    r1_zero_rewards,
)
from lit_align.rewards.normalize import last_boxed, normalize_answer, parse_number
from tests.conftest import SHARED_DATA

EQUIVALENT = [
    ("0.5", "\\frac{1}{2}"),
    ("1/2", "\\frac12"),
    (".5", "1/2"),
    ("1,000", "1000"),
    ("1{,}000", 1000),
    ("\\{1,2\\}", "\\{2,1\\}"),
    ("5 \\text{ cm}", "5"),
    ("5 \\text{ cm}^2", "5"),
    ("\\text{12 dollars}", "12"),
    ("\\boxed{\\dfrac{1}{2}}", "0.5"),
    ("\\tfrac{3}{4}", "0.75"),
    ("x = 3", "3"),
    ("y=-2", "-2"),
    ("50\\%", "50"),
    ("\\$18", "18"),
    ("$18.00$", "18"),
    ("18.", "18"),
    ("30^\\circ", "30"),
    ("(1,2)", "(1, 2)"),
    ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("2\\sqrt{5}", "\\sqrt{20}"),
    ("\\pi/4", "\\frac{\\pi}{4}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("[2, 5)", "[2,5)"),
    ("\\text{(C)}", "(C)"),
    ("42", 42),
    ("42", 42.0),
    ("7", ["6", "7"]),
    # math-verify's number rule: a decimal equals a value that rounds alike at 6 places.
    ("0.0833333333333333", "\\frac{1}{12}"),
    ("50 percent", "50\\%"),
    ("28 pct", "28\\%"),
    ("0.111", "0,111"),  # "0,…" is never a thousands separator
    # Prose and delimited math: the answer is extracted as math-verify extracts it.
    ("Final Answer: The largest $n$ is 34.", "34"),
    ("Therefore $x \\geq 5$ is the solution.", "$x >= 5$"),
    ("\\boxed{1,2}", "$\\boxed{1}\\boxed{2}$"),  # a gold with several boxed answers: all of them
    (
        "The identity matrix is $ \\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix} $.",
        "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
    ),
]

NOT_EQUIVALENT = [
    ("2", "3"),
    ("0.33", "\\frac{1}{3}"),
    ("x+1", "x+2"),
    ("\\frac{\\sqrt{3}}{2}+1", "\\frac{\\sqrt{3}}{2}"),
    ("\\{1,2\\}", "\\{1,3\\}"),
    ("(1,2)", "(2,1)"),
    ("[2,5)", "[2,5]"),
    ("1000", "100"),
    ("", "0"),
    ("-5", "5"),
    ("\\pi", "3"),
    ("7", ["6", "8"]),
    # A pair is not a thousands-separated number (false positives of an earlier grader).
    ("\\boxed{32, 349}", "32349"),
    ("3, 500", "3500"),
    ("0.08333", "\\frac{1}{12}"),  # rounds to 0.08333, not 0.083333
    # A gold with several boxed answers is not matched by its last one alone.
    ("2", "$\\boxed{1}\\boxed{2}$"),
    # A bare expression is graded whole, never searched for a sub-expression.
    ("\\frac{1}{2}+1", "\\frac{1}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)+1", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("x+1", "1"),
]


@pytest.mark.parametrize(("answer", "gold"), EQUIVALENT)
def test_equivalent_answers(answer, gold):
    assert grade(answer, gold)


@pytest.mark.parametrize(("answer", "gold"), NOT_EQUIVALENT)
def test_not_equivalent_answers(answer, gold):
    assert not grade(answer, gold)


def test_grade_many_matches_grade_and_keeps_order():
    pairs = EQUIVALENT[:8] + NOT_EQUIVALENT[:6]
    assert grade_many(pairs) == [True] * 8 + [False] * 6


def test_normalization_examples():
    assert normalize_answer("\\boxed{\\dfrac{1}{2}}") == "\\frac{1}{2}"
    assert normalize_answer("$1{,}000$") == "1000"
    assert normalize_answer("x = 5.") == "5"
    assert normalize_answer("5 \\text{ cm}^2") == "5"
    assert normalize_answer("30^\\circ") == "30"
    assert normalize_answer("1,2") == "1,2"  # a pair, not a thousands separator
    assert last_boxed("a \\boxed{1} b \\fbox{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert last_boxed("\\boxed 9 apples") == "9"
    assert last_boxed("\\boxed{unbalanced") is None
    assert parse_number("\\frac{-3}{4}") == Fraction(-3, 4)
    assert parse_number("9" * 200) is None  # no huge integers in the fast path


def test_r1_zero_reward_fn():
    ok = r1_zero_reward_fn("2+2 is 4 </think> <answer> 4 </answer>", "4")
    assert ok == {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    wrong = r1_zero_reward_fn("hmm </think> <answer> 5 </answer>", "4")
    assert wrong == {"format_reward": 1.0, "answer_reward": 0.0, "reward": 0.0}
    unformatted = r1_zero_reward_fn("the answer is 4", "4")
    assert unformatted == {"format_reward": 0.0, "answer_reward": 0.0, "reward": 0.0}
    # The last <answer>…</answer> counts, and its \boxed{} content when it has one.
    assert (
        r1_zero_reward_fn("</think> <answer> 3 </answer> <answer> \\boxed{4} </answer>", 4)[
            "reward"
        ]
        == 1.0
    )
    assert r1_zero_reward_fn("x </think> <answer> \\boxed{} </answer>", "4")["reward"] == 0.0


def test_question_only_reward_fn():
    assert question_only_reward_fn("so \\boxed{\\frac{1}{2}}.", "0.5")["reward"] == 1.0
    assert question_only_reward_fn("no box 0.5", "0.5") == {
        "format_reward": 0.0,
        "answer_reward": 0.0,
        "reward": 0.0,
    }


def test_math_evaluator_components_and_metrics():
    ev = MathEvaluator("r1_zero")
    completions = ["a </think> <answer> 4 </answer>", "a </think> <answer> 5 </answer>", "4"]
    scores, metrics = ev.compute_rewards(["q"] * 3, completions, ["4"] * 3)
    assert scores.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert ev.total(scores).tolist() == [1.0, 0.0, 0.0]
    assert metrics["format_reward"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["reward"] == pytest.approx(1 / 3)
    assert ev.breakdown(scores)[0] == {"format_reward": 1.0, "answer_reward": 1.0, "reward": 1.0}
    with pytest.raises(ValueError, match="accepted values: r1_zero, question_only"):
        MathEvaluator("cot")
    with pytest.raises(ValueError, match="same length"):
        ev.compute_rewards(["q"], completions, ["4"])


PERFECT = "<reasoning>\n6 * 7 = 42\n</reasoning>\n<answer>\n42\n</answer>\n"


def test_gsm8k_evaluator_perfect_completion_scores_4():
    ev = GSM8kEvaluator()
    chat = [[{"role": "assistant", "content": PERFECT}]]
    scores, metrics = ev.compute_rewards(["q"], chat, ["42"])
    assert ev.component_names == (
        "correctness",
        "integer_answer",
        "strict_format",
        "soft_format",
        "xml_count",
    )
    assert scores.tolist() == [[2.0, 0.5, 0.5, 0.5, 0.5]]
    assert metrics["reward"] == 4.0 and metrics["accuracy"] == 1.0


def test_gsm8k_evaluator_partial_credit_hand_values():
    ev = GSM8kEvaluator()
    # Inline tags: soft format only; xml count: none of the newline-delimited tags match → 0.
    inline = "<reasoning>think</reasoning><answer>41</answer>"
    # Trailing text "xy" after "\n</answer>": 4·0.125 − 0.001·len("xy") − 0.001·(len("\nxy")−1)... see below
    trailing = "<reasoning>\nr\n</reasoning>\n<answer>\n1,000\n</answer>\nxy"
    scores, _ = ev.compute_rewards(["q", "q"], [inline, trailing], ["42", "1000"])
    assert scores[0].tolist() == [0.0, 0.5, 0.0, 0.5, 0.0]
    # trailing: correct (1,000 = 1000) 2.0; "1,000" is not an integer literal → 0; strict fails (text
    # after the closing newline); soft 0.5; xml: 0.5 − 0.001·2 (after "\n</answer>\n") − 0.001·(3−1)
    torch.testing.assert_close(scores[1], torch.tensor([2.0, 0.0, 0.0, 0.5, 0.496]))


def test_evaluators_selectable_by_class_path():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--evaluator", type=RewardEvaluator)
    cfg = parser.parse_args(
        [
            "--evaluator",
            json.dumps(
                {
                    "class_path": "lit_align.rewards.MathEvaluator",
                    "init_args": {"template": "question_only"},
                }
            ),
        ]
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    ev = instantiate(cfg).evaluator
    assert isinstance(ev, MathEvaluator) and ev.template == "question_only"
    cfg = parser.parse_args(["--evaluator", "lit_align.rewards.GSM8kEvaluator"])
    assert isinstance(instantiate(cfg).evaluator, GSM8kEvaluator)


def _plus_one(gold: str) -> str:
    value = parse_number(normalize_answer(gold))
    if value is None:
        return f"{gold}+1"
    value += 1
    return (
        str(value.numerator)
        if value.denominator == 1
        else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"
    )


def _real(path: str) -> list[dict]:
    file = SHARED_DATA / path
    if not file.exists():
        pytest.skip(f"{file} not present (../shared/data)")
    return [json.loads(line) for line in file.read_text().splitlines()]


def test_every_math500_gold_grades_correct_and_gold_plus_one_never_does():
    golds = [row["answer"] for row in _real("math/test500.jsonl")]
    plain = r1_zero_rewards([f"ok </think> <answer> {g} </answer>" for g in golds], golds)
    boxed = r1_zero_rewards(
        [f"ok </think> <answer> \\boxed{{{g}}} </answer>" for g in golds], golds
    )
    assert sum(r["reward"] for r in plain) >= 499
    assert sum(r["reward"] for r in boxed) >= 499
    wrong = r1_zero_rewards(
        [f"ok </think> <answer> {_plus_one(g)} </answer>" for g in golds], golds
    )
    accepted = [g for g, r in zip(golds, wrong, strict=True) if r["reward"]]
    assert accepted == []


def test_every_gsm8k_test_gold_grades_correct_and_gold_plus_one_never_does():
    golds = [row["answer"].split("####")[-1].strip() for row in _real("gsm8k/test.jsonl")]
    assert len(golds) == 1319
    for template in ("{}", "\\boxed{{{}}}"):
        rewards = r1_zero_rewards(
            [f"ok </think> <answer> {template.format(g)} </answer>" for g in golds], golds
        )
        assert all(r["reward"] == 1.0 for r in rewards)
    wrong = r1_zero_rewards(
        [f"ok </think> <answer> {_plus_one(g)} </answer>" for g in golds], golds
    )
    assert not any(r["reward"] for r in wrong)
