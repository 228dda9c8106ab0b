"""Text-level generation: prompts in, sampled texts out, whatever the engine.

``lit_align generate`` samples with a local engine (HF, vLLM) or an OpenAI-compatible endpoint
through one interface, :class:`TextEngine`. A local engine works on token ids; :class:`LocalTextEngine`
tokenizes the prompts for it. An endpoint may fail a request: its result is a
:class:`RequestFailed`, counted, never a silent empty list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from lit_align.engines.base import RolloutEngine, SamplingConfig

__all__ = [
    "LocalTextEngine",
    "Messages",
    "RequestFailed",
    "TextEngine",
    "TextPrompt",
    "TextResult",
    "TextSample",
]

Messages: TypeAlias = list[dict[str, str]]  # [{"role": "system"|"user"|…, "content": …}]
TextPrompt: TypeAlias = str | Messages  # raw text, or a conversation for chat endpoints


@dataclass
class TextSample:
    """One sampled text.

    Attributes:
        text: the completion (a stop string that ended it is kept, as the local engines keep it,
            where the engine reports which one matched).
        finish_reason: ``stop``, ``length``, or what the endpoint said.
        tokens: completion tokens, where known.
        top_logprobs: per generated token, ``(token, {alternative: log-prob})`` (the sampled
            token included), where the endpoint was asked for them.
    """

    text: str
    finish_reason: str
    tokens: int | None = None
    top_logprobs: list[tuple[str, dict[str, float]]] | None = None


@dataclass
class RequestFailed:
    """A prompt whose request failed after every retry (the reason names status and attempt)."""

    reason: str


TextResult: TypeAlias = list[TextSample] | RequestFailed


@runtime_checkable
class TextEngine(Protocol):
    """Samples ``sampling.n`` texts per prompt; one result per prompt, in order."""

    def generate_texts(
        self, prompts: Sequence[TextPrompt], sampling: SamplingConfig
    ) -> list[TextResult]: ...


class LocalTextEngine:
    """A :class:`TextEngine` over a local rollout engine (HF or vLLM).

    Args:
        engine: the token-level engine.
        tokenizer: turns prompts into ids; a conversation goes through its chat template.
    """

    def __init__(self, engine: RolloutEngine, tokenizer: Any) -> None:
        self.engine, self.tokenizer = engine, tokenizer

    def _ids(self, prompt: TextPrompt) -> list[int]:
        if isinstance(prompt, list):
            prompt = self.tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=True
            )
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate_texts(
        self, prompts: Sequence[TextPrompt], sampling: SamplingConfig
    ) -> list[TextResult]:
        results: list[list[TextSample]] = [[] for _ in prompts]
        completions = self.engine.generate([self._ids(p) for p in prompts], sampling)
        for c in completions:
            results[c.prompt_index].append(TextSample(c.text, c.finish_reason, len(c.token_ids)))
        return list(results)
