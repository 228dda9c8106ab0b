"""LLM-as-a-judge rewards for creative writing (story from an opening line).

A judge model rates each story 1–5 on a few criteria (creativity, coherence, engagement by
default). Replies are parsed robustly (JSON, "Creativity: 4", "4/5", "**4**", "four"); an
unparseable reply gets ``fallback_score`` and is counted. GRPO learns only from groups whose
scores differ, so the judge's discrimination is measured too: score histogram, mean within-group
standard deviation and the fraction of zero-variance groups.

Backends: :class:`OpenAIChatJudge` (any OpenAI-compatible ``/chat/completions`` endpoint, API key
read from an environment variable at request time, never stored or logged) and
:class:`LocalJudge` (any ``generate(prompts) -> texts`` callable, e.g. a rollout engine).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from lit_align.rewards.evaluators import RewardEvaluator
from lit_align.rewards.story_checks import CHECKS
from lit_align.rollout.base import SamplingConfig
from lit_align.rollout.openai_api import OpenAICompatibleEngine

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RUBRIC",
    "JudgeBackend",
    "JudgeEvaluator",
    "LocalJudge",
    "OpenAIChatJudge",
    "discrimination_metrics",
    "parse_scores",
]

DEFAULT_RUBRIC = """You are a demanding literary critic. A writer was given an opening line and wrote a \
one-paragraph story that starts with it. Rate the story from {low} (poor) to {high} (excellent) on \
each criterion: {criteria}. Use the whole scale: most stories are neither {low} nor {high}.

Opening line: {opening_line}

Story:
{story}

Reply with JSON only, for example {example}"""

_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
}
_NUM = r"(\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")"


def _to_float(token: str) -> float:
    token = token.lower()
    return float(_WORDS[token]) if token in _WORDS else float(token)


def _from_json(text: str, criteria: Sequence[str]) -> dict[str, float] | None:
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        lowered = {str(k).lower(): v for k, v in obj.items()}
        found = {c: lowered[c] for c in criteria if c in lowered}
        if not found:
            overall = next(
                (lowered[k] for k in ("score", "overall", "rating") if k in lowered), None
            )
            if overall is not None:
                found = dict.fromkeys(criteria, overall)
        try:
            return {c: _to_float(str(v)) for c, v in found.items()} or None
        except (ValueError, KeyError):
            continue
    return None


def _overall(text: str) -> float | None:
    patterns = (
        r"(?:score|rating|overall)\s*[:=]?\s*\**\s*" + _NUM,  # "Score: 4", "Rating = four"
        _NUM + r"\s*/\s*(?:5|10)\b",  # "4/5"
        r"\*\*\s*" + _NUM + r"\s*\*\*",  # "**4**"
        r"^\s*" + _NUM + r"\s*\.?\s*$",  # a bare "4" or "four"
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE | re.MULTILINE)
        if match:
            return _to_float(match.group(1))
    return None


def parse_scores(
    text: str | None, criteria: Sequence[str], low: float = 1.0, high: float = 5.0
) -> dict[str, float] | None:
    """Scores per criterion from a judge reply, or None when it cannot be parsed.

    Tries JSON first, then ``criterion: N`` lines, then one overall score (``Score: 4``, ``4/5``,
    ``**4**``, ``four``) applied to every criterion. Values outside [low, high] are rejected.
    """
    if not text:
        return None
    text = text[:20_000]
    scores = _from_json(text, criteria) or {}
    for criterion in criteria:
        if criterion not in scores:
            match = re.search(re.escape(criterion) + r"\W{0,12}?" + _NUM, text, flags=re.IGNORECASE)
            if match:
                scores[criterion] = _to_float(match.group(1))
    if len(scores) < len(criteria):
        overall = _overall(text)
        if overall is None:
            return None
        scores = {c: scores.get(c, overall) for c in criteria}
    if any(not (low <= v <= high) for v in scores.values()):
        return None
    return scores


class JudgeBackend(Protocol):
    """Anything that answers a batch of judge prompts (None for a failed request).

    ``json_schema``: a JSON schema the reply must follow, for endpoints that constrain decoding
    (OpenAI's and vLLM's ``response_format``); backends that cannot ignore it.
    """

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]: ...


class LocalJudge:
    """A judge backed by a local ``generate(prompts) -> texts`` callable (HF or vLLM engine)."""

    def __init__(self, generate: Callable[[list[str]], list[str]]) -> None:
        self.generate = generate

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]:
        return list(self.generate(list(prompts)))


class OpenAIChatJudge:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM ``serve``, llama.cpp, …).

    A thin judge face of :class:`~lit_align.rollout.openai_api.OpenAICompatibleEngine`: one
    reply per story, None for a request that failed after its retries (scored
    ``fallback_score`` and counted). A refused key, an unknown model or URL and redirects raise
    :class:`~lit_align.rollout.openai_api.APIError` instead: they would fail every request.

    Args:
        base_url: e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the judge model name.
        api_key_env: name of the environment variable holding the API key (read per request;
            the key is never stored in the config, logged or saved). ``None`` sends no key.
        max_concurrency: requests in flight at once.
        max_retries: retries on connection errors, timeouts, 429 and 5xx, with exponential backoff.
        timeout_s: per-request timeout.
        backoff_s: first retry delay; doubles each retry (with jitter).
        temperature: judge sampling temperature.
        max_tokens: judge reply budget.
        system_prompt: optional system message.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 3,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 256,
        system_prompt: str | None = None,
    ) -> None:
        self.engine = OpenAICompatibleEngine(
            base_url,
            model,
            endpoint="chat",
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
        )
        self.sampling = SamplingConfig(n=1, temperature=temperature, max_new_tokens=max_tokens)
        self.system_prompt = system_prompt
        self.last_tokens = 0  # completion tokens of the last batch (where the server reports them)

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        extra = None
        if json_schema is not None:
            extra = {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "scores", "schema": json_schema, "strict": True},
                }
            }
        results = self.engine.generate_texts(
            [[*head, {"role": "user", "content": p}] for p in prompts], self.sampling, extra
        )
        self.last_tokens = sum(s.tokens or 0 for r in results if isinstance(r, list) for s in r)
        return [r[0].text if isinstance(r, list) else None for r in results]


def discrimination_metrics(
    scores: Tensor, group_size: int | None, low: float = 1.0, high: float = 5.0
) -> dict[str, float]:
    """How well a judge separates samples: counts of rounded scores from ``low`` to ``high`` and,
    per group of ``group_size`` consecutive samples, the mean standard deviation and the fraction
    of groups whose scores are all equal (GRPO learns nothing from those).
    """
    rounded = scores.round()
    metrics = {
        f"judge_hist_{v}": float((rounded == v).sum().item())
        for v in range(int(low), int(high) + 1)
    }
    if group_size and group_size > 1 and scores.numel() and scores.numel() % group_size == 0:
        std = scores.view(-1, group_size).std(dim=1)
        metrics["judge_within_group_std"] = std.mean().item()
        metrics["judge_zero_variance_group_frac"] = (std == 0).float().mean().item()
    return metrics


class JudgeEvaluator(RewardEvaluator):
    """Rewards from an LLM judge: the mean of the criteria scores, plus optional rule checks.

    Args:
        backend: an :class:`OpenAIChatJudge`, a :class:`LocalJudge` or any :class:`JudgeBackend`.
        criteria: names of the scored criteria (the reward components).
        rubric: the judge prompt; ``{opening_line}``, ``{story}``, ``{criteria}``, ``{low}``,
            ``{high}`` and ``{example}`` are filled in.
        low: lowest score.
        high: highest score.
        fallback_score: given to every criterion of an unparseable reply or failed request (the
            event is counted in ``judge_unparseable``); the scale's middle by default, so a broken
            reply neither rewards nor punishes the sample much.
        group_size: samples per prompt, for the within-group discrimination metrics.
        structured: ask the endpoint for JSON following a schema of the criteria (integers from
            low to high; OpenAI's and vLLM's ``response_format``); replies are parsed either way.
        samples: judge each story this many times and average the parseable scores (a judge at
            temperature > 0 then gives finer, steadier grades); a story with no parseable reply
            gets ``fallback_score``.
        prepend_opening: judge ``opening line + completion`` (for prompts that end with the line,
            like the ``story`` template) instead of the completion alone.
        checks: rule components added to the reward (weight 1 each): ``starts_with_line`` (bonus
            1), ``repetition`` (minus the fraction of repeated word trigrams), ``length`` (minus the
            words beyond ``max_words``, relative). Judges reward length; these keep it in check.
        max_words: the ``length`` check's budget.
    """

    def __init__(
        self,
        backend: JudgeBackend,
        criteria: Sequence[str] = ("creativity", "coherence", "engagement"),
        rubric: str = DEFAULT_RUBRIC,
        low: float = 1.0,
        high: float = 5.0,
        fallback_score: float | None = None,
        group_size: int | None = None,
        structured: bool = False,
        samples: int = 1,
        prepend_opening: bool = False,
        checks: Sequence[str] = (),
        max_words: int = 150,
    ) -> None:
        if not criteria:
            raise ValueError("criteria must name at least one criterion")
        if low >= high:
            raise ValueError(f"low ({low}) must be below high ({high})")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        unknown = [c for c in checks if c not in CHECKS]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; accepted values: {', '.join(CHECKS)}")
        self.backend = backend
        self.criteria = tuple(c.lower() for c in criteria)
        self.checks = tuple(checks)
        self.component_names = (*self.criteria, *self.checks)
        self.total_weights = (
            *(1.0 / len(self.criteria) for _ in self.criteria),
            *(1.0 for _ in self.checks),
        )
        self.rubric = rubric
        self.low, self.high = low, high
        self.fallback_score = (low + high) / 2 if fallback_score is None else fallback_score
        self.group_size = group_size
        self.structured, self.samples = structured, samples
        self.prepend_opening, self.max_words = prepend_opening, max_words
        self.unparseable_total = 0
        self.last_batch: dict[
            str, float
        ] = {}  # the last call: unparseable, failed, latency, tokens

    def judge_prompt(self, opening_line: str, story: str) -> str:
        example = json.dumps({c: int(self.low + self.high) // 2 for c in self.criteria})
        return self.rubric.format(
            opening_line=opening_line,
            story=story,
            criteria=", ".join(self.criteria),
            low=int(self.low) if float(self.low).is_integer() else self.low,
            high=int(self.high) if float(self.high).is_integer() else self.high,
            example=example,
        )

    def json_schema(self) -> dict[str, Any]:
        """The reply schema: one integer from low to high per criterion."""
        score = {"type": "integer", "minimum": int(self.low), "maximum": int(self.high)}
        return {
            "type": "object",
            "properties": dict.fromkeys(self.criteria, score),
            "required": list(self.criteria),
            "additionalProperties": False,
        }

    def score(
        self, prompts: Sequence[Any], completions: Sequence[str], answers: Sequence[Any]
    ) -> Tensor:
        lines = [
            a if isinstance(a, str) and a else str(p) for p, a in zip(prompts, answers, strict=True)
        ]
        stories = [
            f"{o} {c.lstrip()}" if self.prepend_opening else c
            for o, c in zip(lines, completions, strict=True)
        ]
        asks = [self.judge_prompt(o, s) for o, s in zip(lines, stories, strict=True)]
        schema = self.json_schema() if self.structured else None
        start = time.perf_counter()
        replies = self.backend.complete(asks * self.samples, json_schema=schema)
        seconds = time.perf_counter() - start
        n = len(asks)
        rows, unparseable, failed = [], 0, sum(r is None for r in replies)
        for i in range(n):
            parsed = [
                p
                for k in range(self.samples)
                if (p := parse_scores(replies[k * n + i], self.criteria, self.low, self.high))
            ]
            unparseable += self.samples - len(parsed)
            means = {
                c: sum(p[c] for p in parsed) / len(parsed) if parsed else self.fallback_score
                for c in self.criteria
            }
            checks = [CHECKS[c](stories[i], lines[i], self.max_words) for c in self.checks]
            rows.append([*(means[c] for c in self.criteria), *checks])
        self.last_batch = {
            "judge_unparseable": float(unparseable),
            "judge_failed_requests": float(failed),
            "judge_latency_s": seconds,
            "judge_tokens": float(getattr(self.backend, "last_tokens", 0)),
        }
        self.unparseable_total += unparseable
        if unparseable:
            log.warning(
                "judge: %d of %d replies unparseable (%d requests failed); scored %s",
                unparseable,
                len(replies),
                failed,
                self.fallback_score,
            )
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, len(self.component_names))

    def judge_scores(self, scores: Tensor) -> Tensor:
        """The judge's mean score per sample (the criteria only, not the checks)."""
        return scores[:, : len(self.criteria)].mean(dim=1)

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        metrics = discrimination_metrics(
            self.judge_scores(scores), self.group_size, self.low, self.high
        )
        return {**metrics, **self.last_batch}
