"""``lit_align judge-check``: how well a judge separates stories, before GPU hours go into it.

The judge scores a file of stories (JSONL: ``opening_line``, ``story``, optional ``label``; the
shipped ``judge_check_stories.jsonl`` has three stories per line: good, flat, repetitive and long)
``repeats`` times. Reported: parseable replies, the score histogram, the spread of scores across
stories and within each opening line's group (a group whose stories all get one score gives GRPO
nothing), agreement of repeated calls, mean score per label, and the correlation of score with
length (judges reward length). Warnings say what would go wrong in training.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lit_align.rewards.judge import JudgeBackend, JudgeEvaluator

__all__ = ["BUILTIN_STORIES", "judge_check", "run_judge_check"]

BUILTIN_STORIES = "builtin"


def _stories(path: str) -> list[dict[str, Any]]:
    if path == BUILTIN_STORIES:
        text = resources.files("lit_align.data").joinpath("assets/judge_check_stories.jsonl")
        lines = text.read_text("utf-8").splitlines()
    else:
        lines = Path(path).read_text("utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row.get("story"), str) or not isinstance(row.get("opening_line"), str):
            raise ValueError(f"{path}:{number}: a row needs 'opening_line' and 'story' strings")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no stories")
    return rows


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return None
    return statistics.correlation(xs, ys)


def _group_size(lines: list[str]) -> int:
    sizes = [len(list(g)) for _, g in itertools.groupby(lines)]
    if len(set(sizes)) != 1 or len(sizes) != len(set(lines)):
        raise ValueError(
            "ranked scoring needs the stories of each opening line together and equally many per "
            f"line; got group sizes {sizes}"
        )
    return sizes[0]


def judge_check(
    evaluator: JudgeEvaluator, stories: list[dict[str, Any]], repeats: int = 3
) -> dict[str, Any]:
    """Score ``stories`` ``repeats`` times with ``evaluator``'s judge; the statistics and warnings.

    With ranked scoring each pass shuffles the stories within their groups (seeded by the pass),
    so a judge that ranks by position rather than content disagrees with itself across passes.
    """
    lines = [s["opening_line"] for s in stories]
    texts = [s["story"] for s in stories]
    ranked = evaluator.scoring == "ranked"
    if ranked:
        evaluator.group_size = _group_size(lines)
    runs, unparseable, failed, seconds = [], 0, 0, 0.0
    for repeat in range(repeats):
        order = list(range(len(texts)))
        if ranked and repeat:
            g = evaluator.group_size
            rng = random.Random(repeat)
            for start in range(0, len(order), g):
                block = order[start : start + g]
                rng.shuffle(block)
                order[start : start + g] = block
        shown = [texts[i] for i in order]
        raw = evaluator.judge_scores(
            evaluator.score([lines[i] for i in order], shown, [lines[i] for i in order])
        )
        scores = [0.0] * len(texts)
        for position, i in enumerate(order):
            scores[i] = float(raw[position])
        runs.append(scores)
        unparseable += int(evaluator.last_batch["judge_unparseable"])
        failed += int(evaluator.last_batch["judge_failed_requests"])
        seconds += evaluator.last_batch["judge_latency_s"]
    mean = [statistics.fmean(r[i] for r in runs) for i in range(len(texts))]
    groups: dict[str, list[float]] = {}
    for line, score in zip(lines, runs[0], strict=True):
        groups.setdefault(line, []).append(score)
    multi = [g for g in groups.values() if len(g) > 1]
    labels: dict[str, list[float]] = {}
    for story, score in zip(stories, mean, strict=True):
        labels.setdefault(str(story.get("label", "-")), []).append(score)
    words = [float(len(t.split())) for t in texts]
    report = {
        "stories": len(texts),
        "repeats": repeats,
        "replies": (len(texts) // evaluator.group_size if ranked else len(texts)) * repeats,
        "unparseable": unparseable,
        "failed_requests": failed,
        "seconds_per_story": seconds / (len(texts) * repeats),
        "scoring": evaluator.scoring,
        "histogram": {
            str(v): sum(round(s) == v for s in runs[0])
            for v in range(int(evaluator.low), int(evaluator.high) + 1)
        },
        "score_mean": statistics.fmean(runs[0]),
        "score_std": statistics.pstdev(runs[0]),
        "within_group_std": statistics.fmean(statistics.pstdev(g) for g in multi)
        if multi
        else None,
        "zero_variance_group_frac": (
            sum(statistics.pstdev(g) == 0 for g in multi) / len(multi) if multi else None
        ),
        "repeat_mean_abs_diff": statistics.fmean(
            abs(r[i] - runs[0][i]) for r in runs[1:] for i in range(len(texts))
        )
        if repeats > 1
        else None,
        "repeat_identical_frac": statistics.fmean(
            float(all(r[i] == runs[0][i] for r in runs)) for i in range(len(texts))
        ),
        "mean_by_label": {k: statistics.fmean(v) for k, v in labels.items()},
        "length_correlation": _pearson(words, mean),
    }
    report["warnings"] = _warnings(report)
    return report


def _warnings(r: dict[str, Any]) -> list[str]:
    out = []
    if r["unparseable"]:
        out.append(
            f"{r['unparseable']} of {r['replies']} replies were unparseable and scored the fallback: "
            "try --structured true (JSON schema), another rubric or a larger judge"
        )
    if r["score_std"] == 0:
        out.append(
            "every story got the same score: the judge does not discriminate, GRPO learns nothing"
        )
    elif r["score_std"] < 0.25:
        out.append(
            f"stories barely differ in score (std {r['score_std']:.3f} across stories): the "
            "judge hardly discriminates; its reward signal is tiny"
        )
    elif r["zero_variance_group_frac"]:
        out.append(
            f"{r['zero_variance_group_frac']:.0%} of opening-line groups got one score for all their "
            "stories: those groups give GRPO no signal"
        )
    if r["repeat_mean_abs_diff"] and r["repeat_mean_abs_diff"] >= 0.5 * max(r["score_std"], 1e-9):
        out.append(
            f"repeated calls differ by {r['repeat_mean_abs_diff']:.2f} on average, as much as stories "
            "differ from each other: the scores are mostly noise (average several samples)"
        )
    if r["length_correlation"] is not None and r["length_correlation"] >= 0.7:
        out.append(
            f"scores follow length (correlation {r['length_correlation']:.2f}): the policy will learn "
            "to write long; add checks: [length] or a length-aware rubric"
        )
    return out


def format_judge_check(r: dict[str, Any]) -> str:
    """The report as text."""

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        f"stories {r['stories']} × repeats {r['repeats']}: {r['replies']} replies, "
        f"{r['unparseable']} unparseable, {r['failed_requests']} failed, "
        f"{r['seconds_per_story']:.2f} s per reply",
        "histogram (first pass): " + "  ".join(f"{k}: {v}" for k, v in r["histogram"].items()),
        f"score mean {f(r['score_mean'])}, std across stories {f(r['score_std'])}",
        f"within-group std {f(r['within_group_std'])}, zero-variance groups {f(r['zero_variance_group_frac'])}",
        f"repeats: mean |difference| {f(r['repeat_mean_abs_diff'])}, identical {f(r['repeat_identical_frac'])}",
        "mean score by label: " + ", ".join(f"{k} {v:.2f}" for k, v in r["mean_by_label"].items()),
        f"correlation of score with length: {f(r['length_correlation'])}",
    ]
    lines += [f"WARNING: {w}" for w in r["warnings"]] or ["no warnings"]
    return "\n".join(lines)


def run_judge_check(
    stories: str = BUILTIN_STORIES,
    backend: Literal["openai", "rule"] = "openai",
    base_url: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    rule: Literal["vocabulary", "constant", "random", "length"] = "vocabulary",
    repeats: int = 3,
    structured: bool = False,
    temperature: float = 0.0,
    samples: int = 1,
    max_tokens: int = 256,
    weighted: bool = False,
    scoring: Literal["absolute", "ranked"] = "absolute",
    output: str | None = None,
) -> dict[str, Any]:
    """Run a judge over stories and print how well it discriminates.

    Args:
        stories: a JSONL of ``opening_line``, ``story`` (optional ``label``), or ``builtin``.
        backend: ``openai`` (an OpenAI-compatible endpoint: ``base_url``, ``model``) or ``rule``
            (a deterministic rule judge served on 127.0.0.1, to see what the statistics say).
        base_url: the judge endpoint's API root.
        model: the judge model's name.
        api_key_env: the environment variable with the API key.
        rule: the rule of ``--backend rule`` (``lit_align.rewards.judge_server.RULES``).
        repeats: passes over the stories (agreement of repeated calls).
        structured: ask for schema-constrained JSON replies.
        temperature: the judge's sampling temperature.
        samples: judge calls averaged per story in each pass.
        max_tokens: the judge's reply budget.
        weighted: probability-weighted scores from the score tokens' log-probs (G-Eval).
        scoring: ``absolute`` or ``ranked`` (each opening line's stories ranked in one reply;
            shuffled in every pass after the first, to expose position bias).
        output: also write the statistics as JSON here.
    """
    judge: JudgeBackend
    if backend == "rule":
        from lit_align.rewards.judge_server import ServedRuleJudge

        judge = ServedRuleJudge(rule)
    else:
        if not base_url or not model:
            raise ValueError("--backend openai needs --base_url and --model")
        from lit_align.rewards.judge import OpenAIChatJudge

        judge = OpenAIChatJudge(
            base_url,
            model,
            api_key_env=api_key_env,
            temperature=temperature,
            max_tokens=max_tokens,
            top_logprobs=20 if weighted else 0,
        )
        judge.engine.check()
    evaluator = JudgeEvaluator(
        judge, structured=structured, samples=samples, weighted=weighted, scoring=scoring
    )
    report = judge_check(evaluator, _stories(stories), repeats)
    print(format_judge_check(report))
    if output:
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
    return report
