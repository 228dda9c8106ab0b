"""``lit_align generate``: sample answers to a dataset's questions, grade them, and keep the right
ones as an SFT dataset: a "gold" set written by a strong model behind an OpenAI-compatible
endpoint, or a local model's own correct answers (HF or vLLM).

Each kept sample is one JSONL row that :class:`~lit_align.data.SFTDataModule` reads as is::

    {"id": …, "question": …, "response": …, "answer": …, "provenance": {backend, model, template,
     system_prompt, sampling, sample_index, finish_reason, grade, source, versions}}

The row holds the question, not a formatted prompt: the training run formats it with its own
template, so the pair fits the trained model's chat format rather than the generator's.

Beside the output, ``OUTPUT.progress.jsonl`` records the settings and one line per finished
question. A rerun continues where the last one stopped: finished questions are skipped, questions
whose requests failed are tried again, and rows written after the last recorded question (a run
killed between the two writes) are dropped so that none is written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_align.data.sources import Example
from lit_align.data.templates import (
    CHAT_TEMPLATES,
    GSM8K_SYSTEM_PROMPT,
    TemplateName,
    format_prompt,
)
from lit_align.engines.base import Completion, SamplingConfig
from lit_align.engines.text import RequestFailed, TextEngine, TextPrompt, TextResult
from lit_align.grading import grade_completions
from lit_align.rewards.evaluators import RewardEvaluator

__all__ = ["GOLD_SYSTEM_PROMPTS", "Ledger", "build_prompts", "generate_dataset", "question_id"]

# The system prompt a generator gets by default: the template's format, stated strictly, so that
# a strong model's answers are in it (training later uses the template's own system prompt).
GOLD_SYSTEM_PROMPTS: dict[str, str] = {
    "gsm8k_chat": GSM8K_SYSTEM_PROMPT
    + "\n\nReason step by step inside <reasoning>, then write only the final number inside "
    "<answer>. Write nothing before <reasoning> or after </answer>.",
}

# Settings that decide what a row is: a rerun that changes one would mix two datasets.
_MUST_MATCH = (
    "backend",
    "model",
    "endpoint",
    "template",
    "system_prompt",
    "evaluator",
    "sampling",
    "max_per_question",
    "require_format",
    "dedupe",
)
OUTCOMES = ("kept", "wrong", "unparseable", "duplicate", "surplus")


def question_id(example: Example) -> str:
    """A stable id of a question and its answer (16 hex digits)."""
    key = json.dumps([example.question, example.answer], ensure_ascii=False)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def build_prompts(
    examples: Sequence[Example],
    template: TemplateName,
    system_prompt: str | None,
    endpoint: str | None = None,
) -> list[TextPrompt]:
    """Prompts for the engine: conversations for chat templates, text for the others.

    Args:
        examples: the questions.
        template: a chat template (``gsm8k_chat``: system prompt + question) or a text one.
        system_prompt: the chat templates' system message.
        endpoint: ``chat`` or ``completions`` for an OpenAI-compatible engine (None: local).
    """
    if template in CHAT_TEMPLATES:
        if endpoint == "completions":
            raise ValueError(
                f"template {template!r} is a chat format: use --endpoint chat with it, or a text "
                "template (r1_zero, question_only) with --endpoint completions"
            )
        head = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [[*head, {"role": "user", "content": e.question}] for e in examples]
    if system_prompt:
        raise ValueError(
            f"--system_prompt applies to chat templates (gsm8k_chat); {template!r} is raw text"
        )
    if endpoint == "chat":
        raise ValueError(
            f"template {template!r} is a raw-text prompt: use --endpoint completions with it, or "
            "--template gsm8k_chat with --endpoint chat"
        )
    return [format_prompt(template, e.question) for e in examples]


class Ledger:
    """``OUTPUT.progress.jsonl``: the settings, then one line per finished question.

    Args:
        output: the dataset file it belongs to.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = output.with_name(output.name + ".progress.jsonl")
        self.done: dict[str, dict[str, Any]] = {}

    def start(self, settings: dict[str, Any], overwrite: bool) -> None:
        """Begin a run, or continue the one recorded (refused when its settings differ)."""
        if overwrite:
            for path in (self.output, self.path):
                path.unlink(missing_ok=True)
        if not self.path.exists():
            if self.output.exists():
                raise FileExistsError(
                    f"{self.output} exists but was not written by lit_align generate (no "
                    f"{self.path.name}); choose another --output, or pass --overwrite true"
                )
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self._append([{"settings": settings}])
            return
        lines = [json.loads(x) for x in self.path.read_text("utf-8").splitlines() if x.strip()]
        recorded = lines[0].get("settings", {}) if lines else {}
        changed = [k for k in _MUST_MATCH if recorded.get(k) != settings.get(k)]
        if changed:
            what = "; ".join(
                f"{k}: {recorded.get(k)!r} then, {settings.get(k)!r} now" for k in changed
            )
            raise ValueError(
                f"{self.output} was generated with other settings ({what}); rerun with the same "
                "ones to continue it, or choose another --output, or pass --overwrite true"
            )
        self.done = {line["id"]: line for line in lines[1:] if "id" in line}
        self._drop_unrecorded_rows()

    def _drop_unrecorded_rows(self) -> None:
        if not self.output.exists():
            return
        rows = self.output.read_text("utf-8").splitlines()
        kept = [r for r in rows if r.strip() and json.loads(r).get("id") in self.done]
        if len(kept) != len(rows):
            self.output.write_text("".join(r + "\n" for r in kept), "utf-8")

    def _append(self, lines: list[dict[str, Any]], path: Path | None = None) -> None:
        with open(path or self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            f.flush()
            os.fsync(f.fileno())

    def record(self, rows: list[dict[str, Any]], finished: list[dict[str, Any]]) -> None:
        """Write a chunk's kept rows, then its finished questions (in this order: see above)."""
        self._append(rows, self.output)
        self._append(finished)
        self.done.update((line["id"], line) for line in finished)

    def totals(self) -> dict[str, int]:
        """Outcome counts over every finished question, this run's and earlier ones'."""
        totals = dict.fromkeys(OUTCOMES, 0)
        for line in self.done.values():
            for key in OUTCOMES:
                totals[key] += int(line.get(key, 0))
        totals["questions"] = len(self.done)
        totals["questions_without_kept"] = sum(1 for x in self.done.values() if not x.get("kept"))
        return totals


def _outcomes(
    records: list[dict[str, Any]],
    evaluator: RewardEvaluator,
    max_per_question: int,
    require_format: bool,
    dedupe: bool,
) -> list[str]:
    """One of OUTCOMES per sample of one question, in sample order."""
    seen: set[str] = set()
    outcomes = []
    for record in records:
        formatted = evaluator.is_formatted(record) and record.get("strict_format", 1.0) > 0
        text = " ".join(record["response"].split())
        if require_format and not formatted:
            outcome = "unparseable"
        elif not evaluator.is_correct(record):
            outcome = "wrong" if formatted else "unparseable"
        elif dedupe and text in seen:
            outcome = "duplicate"
        elif outcomes.count("kept") >= max_per_question:
            outcome = "surplus"
        else:
            outcome = "kept"
        seen.add(text)
        outcomes.append(outcome)
    return outcomes


def generate_dataset(
    engine: TextEngine,
    examples: Sequence[Example],
    prompts: Sequence[TextPrompt],
    evaluator: RewardEvaluator,
    sampling: SamplingConfig,
    ledger: Ledger,
    provenance: dict[str, Any],
    max_per_question: int = 1,
    require_format: bool = True,
    dedupe: bool = True,
    chunk_size: int = 64,
    progress: bool = True,
) -> dict[str, int]:
    """Sample, grade and keep, chunk by chunk, recording each chunk in ``ledger``.

    Returns:
        Totals over the whole dataset so far (kept, wrong, unparseable, duplicate, surplus,
        questions, questions_without_kept) and this run's ``api_errors`` (questions whose request
        failed; a rerun tries them again).
    """
    todo, seen = [], set(ledger.done)
    for i, example in enumerate(examples):  # a question repeated in the data is answered once
        if (qid := question_id(example)) not in seen:
            todo.append(i)
            seen.add(qid)
    # Chat answers are stored stripped and ending in one newline: chat endpoints drop trailing
    # whitespace, and this is the layout of the XML format's strict check and of the reference
    # solutions SFT converts. Text-template answers are kept as sampled (their leading space counts).
    chat = bool(prompts) and isinstance(prompts[0], list)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="generate", unit="question")
    failed, kept_now = 0, 0
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        results: list[TextResult] = engine.generate_texts([prompts[i] for i in chunk], sampling)
        completions = [
            Completion(k, [], s.text.strip() + "\n" if chat else s.text, [], [], s.finish_reason)  # type: ignore[arg-type]
            for k, result in enumerate(results)
            if not isinstance(result, RequestFailed)
            for s in result
        ]
        records, _, _ = grade_completions(
            evaluator,
            [examples[i].question for i in chunk],
            [examples[i].answer for i in chunk],
            completions,
        )
        rows, finished = [], []
        for k, i in enumerate(chunk):
            if isinstance(results[k], RequestFailed):
                failed += 1
                continue
            mine = [r for r in records if r["example_index"] == k]
            outcomes = _outcomes(mine, evaluator, max_per_question, require_format, dedupe)
            example, qid = examples[i], question_id(examples[i])
            for s, (record, outcome) in enumerate(zip(mine, outcomes, strict=True)):
                if outcome != "kept":
                    continue
                grade = {name: record[name] for name in evaluator.component_names}
                rows.append(
                    {
                        "id": qid,
                        "question": example.question,
                        "response": record["response"],
                        "answer": example.answer,
                        "provenance": {
                            **provenance,
                            "sample_index": s,
                            "finish_reason": record["finish_reason"],
                            "grade": {**grade, "reward": record["reward"]},
                            "source": example.metadata.get("source"),
                        },
                    }
                )
            finished.append({"id": qid, **{o: outcomes.count(o) for o in OUTCOMES}})
        ledger.record(rows, finished)
        kept_now += len(rows)
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix(kept=kept_now, failed=failed)
    if bar is not None:
        bar.close()
    return {**ledger.totals(), "api_errors": failed}
