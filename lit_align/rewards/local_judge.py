"""A judge that is a local model, e.g. the policy's own initial weights, frozen (no server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["ModelJudge"]


class ModelJudge:
    """Answers judge prompts with a local model through a rollout engine (loaded on first use).

    The judge prompt goes in as one user message through the model's chat template. Its weights
    never change: point it at the policy's starting checkpoint to have "the initial policy judges".

    Args:
        model_name_or_path: hub id, local directory or ``tiny:…``.
        backend: ``hf`` (beside a vLLM policy engine too) or ``vllm`` (not beside another vLLM
            engine in the same process).
        dtype: the judge's dtype.
        max_new_tokens: reply budget.
        temperature: 0 is greedy.
        max_batch_size: prompts per HF ``generate`` call.
        seed: sampling seed.
    """

    def __init__(
        self,
        model_name_or_path: str,
        backend: Literal["hf", "vllm"] = "hf",
        dtype: str = "bfloat16",
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        max_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.model_name_or_path = model_name_or_path
        self.backend, self.dtype = backend, dtype
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.max_batch_size, self.seed = max_batch_size, seed
        self._engine: Any = None
        self.last_tokens = 0

    def _text_engine(self) -> Any:
        if self._engine is None:
            from lit_align.engines.factory import EngineConfig, engine_for_model
            from lit_align.engines.text import LocalTextEngine

            config = EngineConfig(
                backend=self.backend,
                max_batch_size=self.max_batch_size,
                dtype=self.dtype,
                enable_sleep_mode=False,
                seed=self.seed,
            )
            engine, tokenizer = engine_for_model(self.model_name_or_path, config, progress=False)
            self._engine = LocalTextEngine(engine, tokenizer)
        return self._engine

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]:
        from lit_align.engines.base import SamplingConfig

        sampling = SamplingConfig(
            n=1, temperature=self.temperature, max_new_tokens=self.max_new_tokens, stop=[],
            seed=self.seed,
        )  # fmt: skip
        results = self._text_engine().generate_texts(
            [[{"role": "user", "content": p}] for p in prompts], sampling
        )
        self.last_tokens = sum(s.tokens or 0 for r in results for s in r)
        return [r[0].text if r else None for r in results]
