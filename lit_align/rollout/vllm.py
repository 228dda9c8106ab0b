"""A colocated vLLM engine (GPU): one ``vllm.LLM`` per training rank, weights pushed from the policy.

Written against vLLM 0.32 (``pip install 'lit-align[vllm]'``). vLLM is imported only when this
engine is built, so ``import lit_align`` works without it.

- The engine core runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so
  :meth:`VLLMEngine.load_weights` hands the policy's tensors to the model through
  ``LLM.collective_rpc`` without copying them between processes; it streams them in buckets of
  ``bucket_bytes`` and then resets the prefix cache (cached KV entries belong to the old weights).
- ``sleep()`` (level 1: weights to CPU, KV cache dropped) frees GPU memory for the training phase;
  ``load_weights`` wakes the weights only, and ``generate`` wakes the KV cache.
- Log-probs are vLLM's raw ones (``logprobs_mode="raw_logprobs"``: the model before temperature
  and top-p), aligned with the sampled tokens. vLLM reports no entropy: the trainer computes
  token entropy itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from lit_align.rollout.base import Completion, SamplingConfig

__all__ = ["VLLMEngine", "llm_kwargs", "sampling_kwargs"]

SUPPORTED_VLLM = ">=0.32,<0.33"


def llm_kwargs(config: Any, model_name_or_path: str) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for an :class:`~lit_align.rollout.sync.EngineConfig`."""
    kwargs: dict[str, Any] = {
        "model": model_name_or_path,
        "tensor_parallel_size": config.tensor_parallel_size,
        "dtype": config.dtype,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "seed": config.seed,
        "enable_sleep_mode": config.enable_sleep_mode,
        "logprobs_mode": "raw_logprobs",
    }
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    return kwargs


def sampling_kwargs(sampling: SamplingConfig, seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for a :class:`SamplingConfig`."""
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "min_tokens": sampling.min_new_tokens,
        "stop": list(sampling.stop) or None,
        "include_stop_str_in_output": True,  # the seeds keep "</answer>" in the output
        "logprobs": 0,  # the sampled token's log-prob only
        "seed": seed,
        "skip_special_tokens": True,
    }


def _load_into_worker(worker: Any, named: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside vLLM's worker (via collective_rpc): load one bucket into the model."""
    model = worker.model_runner.model
    loaded = model.load_weights(weights=named)
    return len(loaded) if loaded is not None else len(named)


def _buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_tensors:
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


class VLLMEngine:
    """A colocated ``vllm.LLM`` (see the module docstring).

    Args:
        llm: a constructed ``vllm.LLM``.
        tokenizer: the policy's tokenizer (vLLM detokenizes itself; kept for the interface).
        bucket_bytes: bytes of weights sent per ``collective_rpc`` call.
        sleep_level: 1 (weights to CPU, KV cache dropped) or 2 (both dropped).
        sampling_params_cls: ``vllm.SamplingParams`` (default, imported on first use).
        tokens_prompt_cls: ``vllm.TokensPrompt`` (default, imported on first use).
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any = None,
        bucket_bytes: int = 512 * 2**20,
        sleep_level: int = 1,
        sampling_params_cls: Any = None,
        tokens_prompt_cls: Any = None,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.bucket_bytes = bucket_bytes
        self.sleep_level = sleep_level
        # vllm.SamplingParams / vllm.TokensPrompt, imported on first use unless given.
        self._sampling_params_cls = sampling_params_cls
        self._tokens_prompt_cls = tokens_prompt_cls
        self.synced_step: int | None = None
        self._asleep = False
        self._weights_awake = True
        self._calls = 0
        self._sleep_enabled = True

    @classmethod
    def from_config(cls, config: Any, model_name_or_path: str, tokenizer: Any = None) -> VLLMEngine:
        """Build ``vllm.LLM`` in this process from an ``EngineConfig``."""
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                f"engine backend 'vllm' needs vLLM {SUPPORTED_VLLM}: pip install 'lit-align[vllm]' "
                "(GPU only); or set engine.backend: hf"
            ) from err
        if not torch.cuda.is_available():
            raise RuntimeError(
                "engine backend 'vllm' needs a CUDA GPU; use engine.backend: hf on CPU"
            )
        # In-process engine core: collective_rpc then passes tensors by reference.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine = cls(vllm.LLM(**llm_kwargs(config, model_name_or_path)), tokenizer)
        engine._sleep_enabled = bool(config.enable_sleep_mode)
        return engine

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        if self._sleep_enabled and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep, self._weights_awake = True, False

    def wake_up(self) -> None:
        if self._asleep:
            # Weights already woken by load_weights: only the KV cache is left to restore.
            self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
            self._asleep, self._weights_awake = False, True

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self._asleep and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays released until generate
            self._weights_awake = True
        for bucket in _buckets(named_tensors, self.bucket_bytes):
            self.llm.collective_rpc(_load_into_worker, args=(bucket,))
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------ generation

    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[Completion]:
        if self._sampling_params_cls is None or self._tokens_prompt_cls is None:
            from vllm import SamplingParams, TokensPrompt

            self._sampling_params_cls, self._tokens_prompt_cls = SamplingParams, TokensPrompt
        self.wake_up()
        seed = sampling.seed * 1_000_003 + self._calls
        self._calls += 1
        params = self._sampling_params_cls(**sampling_kwargs(sampling, seed))
        prompts = [self._tokens_prompt_cls(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions: list[Completion] = []
        for index, request in enumerate(outputs):
            for out in sorted(request.outputs, key=lambda o: o.index):
                token_ids = list(out.token_ids)
                log_probs = [
                    step[tok].logprob
                    for step, tok in zip(out.logprobs or [], token_ids, strict=False)
                ]
                reason = "length" if out.finish_reason == "length" else "stop"
                completions.append(Completion(index, token_ids, out.text, log_probs, [], reason))
        return completions
