"""Synthetic tasks generated in code, deterministic by seed, that tiny CPU models can learn
(demos and tests): ``synthetic:addition``, ``addition_noisy``, ``copy`` and
``multiplication_tools`` (a calculator-use task for multi-turn demos)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from lit_align.data.examples import Example
from lit_align.environments.builtin_tools import calculator

__all__ = ["TOOL_SHARE", "make_synthetic"]


def _demo_example(task: str, question: str, reasoning: str, answer: int) -> Example:
    """A synthetic row with a demonstration in the demo template's format."""
    return Example(
        question=question,
        answer=str(answer),
        response=f" {reasoning} </think> <answer> {answer} </answer>",
        metadata={"task": task},
    )


def _addition(rng: random.Random, max_operand: int) -> Example:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return _demo_example("addition", f"What is {a} + {b}?", f"{a} + {b} = {a + b}", a + b)


def _copy(rng: random.Random, max_operand: int) -> Example:
    n = rng.randint(0, max_operand)
    return _demo_example("copy", f"Repeat the number {n}.", f"the number is {n}", n)


def _addition_noisy(rng: random.Random, max_operand: int) -> Example:
    """Addition whose demonstration is wrong half the time (the answer field stays right):
    SFT on it leaves a policy that is right about half the time, for RL to sharpen."""
    example = _addition(rng, max_operand)
    if rng.random() < 0.5:
        total = int(example.answer)
        wrong = total + rng.choice([-3, -2, -1, 1, 2, 3])
        wrong = wrong if wrong >= 0 else total + 1
        example.response = example.response.replace(f"= {total} ", f"= {wrong} ").replace(
            f"<answer> {total} </answer>", f"<answer> {wrong} </answer>"
        )
        example.metadata["noisy"] = True
    return example


# Of the tool task's demonstrations, the share that calls the calculator (the rest guess).
TOOL_SHARE = 0.6


def _multiplication_tools(rng: random.Random, max_operand: int) -> Example:
    """Two-digit multiplication, which a tiny model cannot do in its head, demonstrated either
    with a calculator call (call, result, answer: ``TOOL_SHARE`` of rows) or as a guess that
    is wrong. ``transcript`` is the demonstration; ``response`` its last turn."""
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    product = a * b
    if rng.random() < TOOL_SHARE:
        expression = f"{a} * {b}"
        call = {"name": "calculator", "arguments": {"expression": expression}}
        transcript = [
            {"role": "assistant", "content": f"<tool_call>{json.dumps(call)}</tool_call>"},
            {"role": "tool", "name": "calculator", "content": calculator(expression)},
            {"role": "assistant", "content": f"<answer> {product} </answer>"},
        ]
    else:
        # A number of the product's size that says nothing about it: a guess near the product
        # would teach the model to estimate from the question, even after calling the tool.
        guess = rng.choice(
            [n for n in (rng.randint(100, 9801), rng.randint(100, 9801)) if n != product] or [1]
        )
        transcript = [{"role": "assistant", "content": f"<answer> {guess} </answer>"}]
    return Example(
        question=f"What is {a} * {b}?",
        answer=str(product),
        response=transcript[-1]["content"],
        transcript=transcript,
        metadata={"task": "multiplication_tools"},
    )


_SYNTHETIC: dict[str, Callable[[random.Random, int], Example]] = {
    "addition": _addition,
    "addition_noisy": _addition_noisy,
    "copy": _copy,
    "multiplication_tools": _multiplication_tools,
}


def make_synthetic(task: str, size: int, seed: int = 0, max_operand: int = 9) -> list[Example]:
    """``size`` examples of a synthetic task, by seed: ``addition`` ("What is a + b?"),
    ``addition_noisy`` (the same with half the demonstrations wrong), ``copy``, or
    ``multiplication_tools`` (two-digit products, demonstrated as calculator episodes or wrong
    guesses, in the ``demo_chat`` answer format; operands 10–99 whatever ``max_operand``)."""
    if task not in _SYNTHETIC:
        raise ValueError(
            f"unknown synthetic task {task!r}; accepted values: {', '.join(_SYNTHETIC)}"
        )
    rng = random.Random(seed)
    return [_SYNTHETIC[task](rng, max_operand) for _ in range(size)]
