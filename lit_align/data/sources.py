"""Data sources that yield uniform examples: question, ground-truth answer, optional response.

A source is one string, so configs stay short:

- ``path/to/file.jsonl`` — local JSONL in the GSM8K layout (``question``, ``answer`` ending in
  ``#### final``), the MATH layouts (``problem`` + ``answer``, or ``problem`` + ``solution`` whose
  last ``\\boxed{}`` is the answer) or an SFT layout (``prompt``, ``response``, optional
  ``ground_truth``/``answer``; the prompt is used as written);
- ``hf:NAME`` — a Hugging Face hub dataset through the ``datasets`` library (online users);
- ``synthetic:addition`` / ``synthetic:copy`` — small tasks generated in code, deterministic by
  seed, that tiny CPU models can learn (demos and tests);
- ``creative:opening_lines`` — the shipped story opening lines (question and answer are the line:
  a judge reward reads it from the answer).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lit_align.rewards.normalize import last_boxed

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "Example",
    "Layout",
    "filter_correct",
    "load_examples",
    "make_synthetic",
    "reference_to_sft",
    "subset",
]

Layout = Literal["auto", "gsm8k", "math", "sft"]
OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """A malformed data row; the message names the file, the line, the field and the fix."""


@dataclass
class Example:
    """One row of any source.

    Attributes:
        question: the problem text (formatted into a prompt by a template).
        answer: ground truth: a string or a list of acceptable answers ("" when unknown).
        response: the SFT target that follows the prompt, if any.
        prompt: a prompt already formatted (SFT files); when set, templates are not applied.
        metadata: anything else (reference solution, level, subject, source line…).
    """

    question: str
    answer: str | list[str] = ""
    response: str | None = None
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- row parsers


def _need(row: dict, key: str, where: str, layout: str) -> str:
    """A required text field: present, a string, not blank."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(
            f"{where}: field {key!r} must be a string, got {_json_type(value)} {value!r:.60}; "
            "quote it in the file, or set on_error: skip to drop such rows"
        )
    if value is None or not value.strip():
        state = "missing" if key not in row else "empty"
        raise DataError(
            f"{where}: field {key!r} is {state} ({layout} rows need it); fix the row, or set "
            "on_error: skip to drop such rows"
        )
    return value


def _answer_text(value: Any, key: str, where: str) -> str | None:
    """An answer field as text: strings as they are, numbers written out; anything else fails."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DataError(
        f"{where}: field {key!r} must be a string or a number, got {_json_type(value)} "
        f"{value!r:.60}; write one final answer per row, or set on_error: skip"
    )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def _gsm8k_row(row: dict, where: str) -> Example:
    question = _need(row, "question", where, "GSM8K")
    solution = _need(row, "answer", where, "GSM8K")
    if "####" not in solution:
        raise DataError(f"{where}: field 'answer' has no '#### final answer' line (GSM8K layout)")
    reasoning, final = solution.rsplit("####", 1)
    final = final.strip()
    if not final:
        raise DataError(f"{where}: field 'answer' has an empty final answer after '####'")
    return Example(question=question, answer=final, metadata={"solution": reasoning.strip()})


def _math_row(row: dict, where: str) -> Example:
    problem = _need(row, "problem", where, "MATH")
    solution = _answer_text(row.get("solution"), "solution", where) or ""
    answer = _answer_text(row.get("answer"), "answer", where)
    if answer is None:
        answer = last_boxed(solution) if solution else None
        if answer is None:
            raise DataError(
                f"{where}: no field 'answer' and no \\boxed{{}} in 'solution' (MATH layout); "
                "add an answer, or set on_error: skip"
            )
    if not str(answer).strip():
        raise DataError(
            f"{where}: field 'answer' is empty (MATH layout); fix it or set on_error: skip"
        )
    meta = {k: row[k] for k in ("subject", "type", "level", "unique_id", "idx") if k in row}
    meta["solution"] = solution
    return Example(question=problem, answer=str(answer), metadata=meta)


def _sft_row(row: dict, where: str) -> Example:
    response = _need(row, "response", where, "SFT")
    key = "ground_truth" if "ground_truth" in row else "answer"
    truth = _answer_text(row.get(key, ""), key, where)
    truth = truth if truth is not None else ""
    if "prompt" not in row and "question" in row:
        # A bare question (``lit_align generate`` writes these): the training template formats
        # it, so the pair fits the trained model's chat format, not the generator's.
        question = _need(row, "question", where, "SFT")
        return Example(question=question, response=response, answer=truth)
    prompt = _need(row, "prompt", where, "SFT")
    return Example(question=prompt, prompt=prompt, response=response, answer=truth)


_PARSERS: dict[str, Callable[[dict, str], Example]] = {
    "gsm8k": _gsm8k_row,
    "math": _math_row,
    "sft": _sft_row,
}


def _detect(row: dict, where: str) -> str:
    if "response" in row and ("prompt" in row or "question" in row):
        return "sft"
    if "problem" in row:
        return "math"
    if "question" in row:
        return "gsm8k"
    raise DataError(
        f"{where}: cannot tell the layout from fields {sorted(row)}; expected GSM8K (question, "
        "answer), MATH (problem, answer/solution) or SFT (prompt or question, response); set "
        "layout explicitly"
    )


def _parse_rows(
    rows: Iterable[tuple[str, Any]], layout: Layout, on_error: OnError, name: str
) -> list[Example]:
    examples, skipped, first_error = [], 0, None
    for where, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            kind = _detect(row, where) if layout == "auto" else layout
            example = _PARSERS[kind](row, where)
        except DataError as err:
            if on_error == "raise":
                raise
            skipped += 1
            first_error = first_error or str(err)
            continue
        example.metadata.setdefault("source", where)
        examples.append(example)
    if skipped:
        log.warning("%s: skipped %d malformed rows (first: %s)", name, skipped, first_error)
    return examples


def _jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    where,
                    DataError(
                        f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                        "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or set on_error: skip"
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as err:
                yield (
                    where,
                    DataError(
                        f"{where}: invalid JSON ({err.msg} at column {err.colno}); fix the line, or set "
                        "on_error: skip"
                    ),
                )


# ----------------------------------------------------------------------------- synthetic tasks


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


_SYNTHETIC: dict[str, Callable[[random.Random, int], Example]] = {
    "addition": _addition,
    "addition_noisy": _addition_noisy,
    "copy": _copy,
}


def make_synthetic(task: str, size: int, seed: int = 0, max_operand: int = 9) -> list[Example]:
    """``size`` examples of a synthetic task, by seed: ``addition`` ("What is a + b?"),
    ``addition_noisy`` (the same with half the demonstrations wrong) or ``copy``."""
    if task not in _SYNTHETIC:
        raise ValueError(
            f"unknown synthetic task {task!r}; accepted values: {', '.join(_SYNTHETIC)}"
        )
    rng = random.Random(seed)
    return [_SYNTHETIC[task](rng, max_operand) for _ in range(size)]


# ----------------------------------------------------------------------------- entry point


def _hf_rows(name: str, split: str, config: str | None) -> Iterable[tuple[str, Any]]:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"source 'hf:{name}' needs the `datasets` package: pip install datasets"
        ) from err
    ds = datasets.load_dataset(name, config, split=split)
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split}]#{i}", dict(row)


def load_examples(
    source: str,
    split: str = "train",
    layout: Layout = "auto",
    limit: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    hf_config: str | None = None,
    size: int = 1024,
    max_operand: int = 9,
) -> list[Example]:
    """Load examples from a JSONL path, ``hf:NAME`` or ``synthetic:TASK``.

    Args:
        source: where the data comes from (see the module docstring).
        split: dataset split for ``hf:`` sources.
        layout: row layout; ``auto`` detects it from the first fields.
        limit: keep a seeded random subset of this size (``None``: all).
        seed: seed of the subset and of synthetic tasks.
        on_error: ``raise`` a :class:`DataError` naming file, line and field, or ``skip`` the row
            (skips are counted and logged).
        hf_config: configuration name of a hub dataset (``main`` for ``openai/gsm8k``).
        size: number of examples of a synthetic task.
        max_operand: largest operand of synthetic tasks.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"unknown on_error {on_error!r}; accepted values: raise, skip")
    if layout not in ("auto", *_PARSERS):
        raise ValueError(f"unknown layout {layout!r}; accepted values: auto, {', '.join(_PARSERS)}")
    if source.startswith("synthetic:"):
        examples = make_synthetic(source.removeprefix("synthetic:"), size, seed, max_operand)
    elif source.startswith("creative:"):
        from lit_align.data.creative import load_opening_lines

        if source != "creative:opening_lines":
            raise ValueError(
                f"unknown creative source {source!r}; accepted: creative:opening_lines"
            )
        examples = [Example(question=line, answer=line) for line in load_opening_lines()]
    else:
        if source.startswith("hf:"):
            rows: Iterable[tuple[str, Any]] = _hf_rows(source.removeprefix("hf:"), split, hf_config)
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"data source {source!r} is not a file; give a JSONL path, hf:NAME, synthetic:TASK or "
                    "creative:opening_lines"
                )
            rows = _jsonl_rows(path)
        examples = _parse_rows(rows, layout, on_error, source)
        if not examples:
            raise DataError(
                f"{source}: no usable rows (the file is empty, or every row was malformed and "
                "skipped); check the path and the file's contents"
            )
    return subset(examples, limit, seed)


def subset(examples: Sequence[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of ``limit`` examples (all of them, in order, when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    indices = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in indices]


def filter_correct(examples: Sequence[Example], evaluator: Any = None) -> list[Example]:
    """Keep SFT examples whose response grades correct against the row's answer.

    Args:
        examples: rows with responses (rows without a response or an answer are dropped).
        evaluator: a :class:`~lit_align.rewards.evaluators.RewardEvaluator` for the responses'
            format (None: the r1_zero format's rewards).
    """
    candidates = [e for e in examples if e.response is not None and e.answer not in ("", [])]
    responses = [e.response or "" for e in candidates]
    answers = [e.answer for e in candidates]
    if evaluator is None:
        from lit_align.rewards.formats import r1_zero_rewards

        correct = [r["reward"] == 1.0 for r in r1_zero_rewards(responses, answers)]
    else:
        scores, _ = evaluator.compute_rewards([e.question for e in candidates], responses, answers)
        correct = [evaluator.is_correct(row) for row in evaluator.breakdown(scores)]
    return [e for e, ok in zip(candidates, correct, strict=True) if ok]


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def reference_to_sft(example: Example, style: Literal["r1_zero", "xml"] = "r1_zero") -> Example:
    """Turn a GSM8K/MATH reference solution into an SFT pair.

    ``r1_zero``: `` {reasoning} </think> <answer> {final} </answer>``, following a prompt that ends
    with ``<think>``. ``xml``: the reasoning/answer XML format ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n``.
    GSM8K calculator annotations (``<<48/2=24>>``) are removed.
    """
    solution = example.metadata.get("solution")
    if not solution:
        raise DataError(
            f"{example.metadata.get('source', 'example')}: no reference solution to convert "
            "(GSM8K and MATH layouts carry one)"
        )
    reasoning = _CALCULATOR.sub("", solution).strip()
    final = example.answer if isinstance(example.answer, str) else example.answer[0]
    if style == "xml":
        response = f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{final}\n</answer>\n"
    elif style == "r1_zero":
        response = f" {reasoning} </think> <answer> {final} </answer>"
    else:
        raise ValueError(f"unknown style {style!r}; accepted values: r1_zero, xml")
    return replace(example, response=response)
