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
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from lit_align.engines.base import SamplingConfig
from lit_align.engines.openai_api import OpenAICompatibleEngine
from lit_align.rewards.evaluators import RewardEvaluator
from lit_align.rewards.judge_parse import parse_scores, weighted_scores
from lit_align.rewards.judge_rank import parse_ranking, rank_prompt, rank_schema, rank_scores
from lit_align.rewards.story_checks import CHECKS

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

    A thin judge face of :class:`~lit_align.engines.openai_api.OpenAICompatibleEngine`: one
    reply per story, None for a request that failed after its retries (scored
    ``fallback_score`` and counted). A refused key, an unknown model or URL and redirects raise
    :class:`~lit_align.engines.openai_api.APIError` instead: they would fail every request.

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
        top_logprobs: ask for this many alternatives per reply token (OpenAI allows up to 20),
            for probability-weighted scores (``JudgeEvaluator(weighted=True)``); 0: none.
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
        top_logprobs: int = 0,
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
        self.top_logprobs = top_logprobs
        self.last_logprobs: list[Any] = []  # per reply of the last batch: TextSample.top_logprobs

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        extra: dict[str, Any] = {}
        if json_schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "scores", "schema": json_schema, "strict": True},
            }
        if self.top_logprobs:
            extra.update(logprobs=True, top_logprobs=self.top_logprobs)
        results = self.engine.generate_texts(
            [[*head, {"role": "user", "content": p}] for p in prompts], self.sampling, extra
        )
        self.last_tokens = sum(s.tokens or 0 for r in results if isinstance(r, list) for s in r)
        self.last_logprobs = [r[0].top_logprobs if isinstance(r, list) else None for r in results]
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
        group_size: samples per prompt (the GRPO group), for the within-group metrics and
            ``ranked`` scoring; None: the rollout DataModule's ``group_size``
            (:meth:`set_group_size`).
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
        weighted: probability-weighted scores (G-Eval): each criterion's expected score under
            the judge's distribution over the score token, finer than its integer; needs a
            backend that returns log-probs (``OpenAIChatJudge(top_logprobs=20)``); a reply
            without them is parsed as usual (``judge_weighted`` counts the weighted ones).
        scoring: ``absolute`` (each story rated alone) or ``ranked`` (each group of
            ``group_size`` stories ranked in one reply, best ``high`` to worst ``low``, evenly:
            no ties, so no zero-variance groups when absolute scores collapse; every criterion
            gets the story's place score; ``samples`` rankings are averaged).
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
        weighted: bool = False,
        scoring: Literal["absolute", "ranked"] = "absolute",
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
        if weighted and not getattr(backend, "top_logprobs", 0):
            raise ValueError(
                "weighted scores need a backend that returns log-probs: "
                "OpenAIChatJudge(..., top_logprobs=20)"
            )
        self.weighted = weighted
        if scoring not in ("absolute", "ranked"):
            raise ValueError(f"unknown scoring {scoring!r}; accepted values: absolute, ranked")
        self.scoring = scoring
        self.unparseable_total = 0
        self.last_batch: dict[
            str, float
        ] = {}  # the last call: unparseable, failed, latency, tokens

    def set_group_size(self, group_size: int) -> None:
        if self.group_size is None:  # a value given explicitly wins
            self.group_size = group_size

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
        start = time.perf_counter()
        judged = (
            self._ranked(lines, stories)
            if self.scoring == "ranked"
            else self._absolute(lines, stories)
        )
        rows = [
            [*scores, *(CHECKS[c](story, line, self.max_words) for c in self.checks)]
            for scores, story, line in zip(judged, stories, lines, strict=True)
        ]
        self.last_batch["judge_latency_s"] = time.perf_counter() - start
        self.last_batch["judge_tokens"] = float(getattr(self.backend, "last_tokens", 0))
        unparseable = int(self.last_batch["judge_unparseable"])
        self.unparseable_total += unparseable
        if unparseable:
            log.warning(
                "judge: %d replies unparseable (%d requests failed); scored %s",
                unparseable,
                int(self.last_batch["judge_failed_requests"]),
                self.fallback_score,
            )
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, len(self.component_names))

    def _absolute(self, lines: list[str], stories: list[str]) -> list[list[float]]:
        """Each story rated on its own; ``samples`` replies averaged per criterion."""
        asks = [self.judge_prompt(o, s) for o, s in zip(lines, stories, strict=True)]
        schema = self.json_schema() if self.structured else None
        replies = self.backend.complete(asks * self.samples, json_schema=schema)
        logprobs = getattr(self.backend, "last_logprobs", None) if self.weighted else None
        weighted = 0

        def read(j: int) -> dict[str, float] | None:
            nonlocal weighted
            if logprobs and logprobs[j]:
                found = weighted_scores(logprobs[j], self.criteria, self.low, self.high)
                if found is not None:
                    weighted += 1
                    return found
            return parse_scores(replies[j], self.criteria, self.low, self.high)

        n, out, unparseable = len(asks), [], 0
        for i in range(n):
            parsed = [p for k in range(self.samples) if (p := read(k * n + i))]
            unparseable += self.samples - len(parsed)
            out.append(
                [
                    sum(p[c] for p in parsed) / len(parsed) if parsed else self.fallback_score
                    for c in self.criteria
                ]
            )
        self.last_batch = {
            "judge_unparseable": float(unparseable),
            "judge_failed_requests": float(sum(r is None for r in replies)),
            "judge_weighted": float(weighted),
        }
        return out

    def _ranked(self, lines: list[str], stories: list[str]) -> list[list[float]]:
        """Each group of ``group_size`` stories ranked in one reply; places become scores."""
        g = self.group_size
        if not g or len(stories) % g:
            raise ValueError(
                f"scoring 'ranked' needs group_size (samples per prompt) dividing the batch; got "
                f"group_size {g} for {len(stories)} stories"
            )
        groups = [range(i, i + g) for i in range(0, len(stories), g)]
        asks = [rank_prompt(lines[r[0]], [stories[i] for i in r], self.criteria) for r in groups]
        schema = rank_schema(g) if self.structured else None
        replies = self.backend.complete(asks * self.samples, json_schema=schema)
        out: list[list[float]] = [[] for _ in stories]
        unparseable = 0
        for k, members in enumerate(groups):
            orders = [
                o
                for s in range(self.samples)
                if (o := parse_ranking(replies[s * len(groups) + k], g))
            ]
            unparseable += self.samples - len(orders)
            places = [rank_scores(o, self.low, self.high) for o in orders]
            for j, i in enumerate(members):
                value = sum(p[j] for p in places) / len(places) if places else self.fallback_score
                out[i] = [value] * len(self.criteria)
        self.last_batch = {
            "judge_unparseable": float(unparseable),
            "judge_failed_requests": float(sum(r is None for r in replies)),
            "judge_weighted": 0.0,
        }
        return out

    def judge_scores(self, scores: Tensor) -> Tensor:
        """The judge's mean score per sample (the criteria only, not the checks)."""
        return scores[:, : len(self.criteria)].mean(dim=1)

    def extra_metrics(self, scores: Tensor) -> dict[str, float]:
        metrics = discrimination_metrics(
            self.judge_scores(scores), self.group_size, self.low, self.high
        )
        return {**metrics, **self.last_batch}
