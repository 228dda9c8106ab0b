"""The rollout-engine interface shared by the HF and vLLM engines."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

__all__ = [
    "Completion",
    "GenerationInterrupted",
    "RolloutEngine",
    "SamplingConfig",
    "StaleWeightsError",
    "check_weight_version",
    "row_seed",
]


class StaleWeightsError(RuntimeError):
    """A round was about to be generated with weights older than the policy's."""


class GenerationInterrupted(RuntimeError):
    """An engine stopped generating because its ``interrupt`` callable asked it to."""


def row_seed(seed: int, prompt: Sequence[int], sample: int) -> int:
    """A 63-bit seed from (seed, prompt tokens, sample index): a prompt's samples depend on the
    seed alone, never on the batch the prompt shares."""
    key = repr((seed, list(prompt), sample)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample completions.

    Attributes:
        n: samples per prompt (the GRPO group size).
        temperature: 0 means greedy.
        top_p: nucleus sampling mass.
        max_new_tokens: generation budget per sample.
        min_new_tokens: end-of-sequence is suppressed before this many tokens.
        stop: stop strings; generation ends after one appears, and it is kept in the text.
            None: the task's (a DataModule or ``lit_align eval`` fills in its template's, e.g.
            ``</answer>``); ``[]``: none.
        seed: sampling seed; the HF engine derives each row's stream from (seed, prompt, sample
            index), so a prompt's samples do not depend on its batch. Vary it per round.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    stop: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"sampling n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"sampling temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if (
            self.max_new_tokens < 1
            or self.min_new_tokens < 0
            or self.min_new_tokens > self.max_new_tokens
        ):
            raise ValueError(
                f"need 0 <= min_new_tokens ({self.min_new_tokens}) <= max_new_tokens ({self.max_new_tokens}), "
                "max_new_tokens >= 1"
            )


@dataclass
class Completion:
    """One sampled completion.

    Attributes:
        prompt_index: which prompt of the call it answers.
        token_ids: generated token ids (the stop string's tokens included, padding excluded).
        text: decoded text (special tokens skipped).
        log_probs: per-token log-probabilities of the sampled tokens under the engine's model
            (temperature 1, no top-p), aligned with ``token_ids``.
        entropy: per-token entropy of the engine's next-token distribution (temperature 1).
        finish_reason: ``stop`` (end-of-sequence or a stop string) or ``length`` (budget hit).
    """

    prompt_index: int
    token_ids: list[int]
    text: str
    log_probs: list[float]
    entropy: list[float]
    finish_reason: Literal["stop", "length"]

    @property
    def mean_entropy(self) -> float:
        return sum(self.entropy) / len(self.entropy) if self.entropy else 0.0


@runtime_checkable
class RolloutEngine(Protocol):
    """What the DataModules and callbacks need from an inference engine.

    An engine knows which weights it holds: :meth:`load_weights` records the policy's optimizer
    step as :attr:`weight_version`, and callers compare it with the trainer's step before they
    generate, so rollouts from stale weights fail loudly instead of silently flattening the reward.

    For a LoRA policy an engine may declare ``adapter_sync`` (``adapter``: it serves adapters and
    has ``load_adapter(state, peft_config, version)``; ``trainable``: it holds a peft copy;
    ``merged``, the default: it takes whole merged weights), which
    :func:`~lit_align.engines.weights.sync_weights` follows.
    """

    @property
    def weight_version(self) -> int | None:
        """The optimizer step of the policy whose weights the engine holds (None: never loaded)."""
        ...

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """n completions per prompt, prompt-major: ``[p0s0, p0s1, …, p1s0, …]``. ``seeds`` (one
        per prompt) replaces ``sampling.seed`` prompt by prompt: an episode's later turns draw
        from a stream of their own even when two transcripts are equal so far."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Replace the engine's weights with the policy's (HF parameter names) of step ``version``."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory for the training phase (no-op where meaningless)."""
        ...

    def wake_up(self) -> None:
        """Undo :meth:`sleep` before the next generation."""
        ...


def check_weight_version(engine: RolloutEngine, step: int, what: str = "a rollout round") -> None:
    """Raise :class:`StaleWeightsError` unless ``engine`` holds the weights of optimizer step ``step``."""
    held = engine.weight_version
    if held != step:
        raise StaleWeightsError(
            f"refusing to generate {what}: the rollout engine holds the weights of step {held} but "
            f"the policy is at step {step}, so the samples would come from a stale policy. Call "
            "lit_align.engines.sync_weights(engine, model, step) before generating (lit_align's "
            "DataModules do it before every round), and make sure the engine's load_weights "
            "records the version it is given as its weight_version."
        )
