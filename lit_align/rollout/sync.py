"""Building an engine for a policy and pushing the policy's full weights into it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from lit_align.rollout.base import RolloutEngine

__all__ = ["EngineConfig", "build_engine", "full_state_items", "sync_weights"]


@dataclass
class EngineConfig:
    """Which rollout engine to run and how.

    Attributes:
        backend: ``hf`` (HF generate on a private copy of the policy; CPU, tests, small GPU runs)
            or ``vllm`` (colocated vLLM on GPU).
        max_batch_size: prompts per HF ``generate`` call.
        gpu_memory_utilization: vLLM's share of GPU memory (colocated with training: keep it low).
        tensor_parallel_size: vLLM tensor parallelism.
        dtype: vLLM weights dtype.
        max_model_len: vLLM context length (prompt + completion); None: the model's.
        enable_sleep_mode: let vLLM free its memory during the training phase.
        seed: vLLM's sampling seed.
    """

    backend: Literal["hf", "vllm"] = "hf"
    max_batch_size: int = 64
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    enable_sleep_mode: bool = True
    seed: int = 0


def build_engine(
    config: EngineConfig, model: Any, tokenizer: Any, model_name_or_path: str
) -> RolloutEngine:
    """An engine of ``config.backend`` for this policy (vLLM is imported only when asked for)."""
    if config.backend == "hf":
        from lit_align.rollout.hf import HFEngine

        return HFEngine.from_policy(model, tokenizer, max_batch_size=config.max_batch_size)
    if config.backend == "vllm":
        from lit_align.rollout.vllm import VLLMEngine

        return VLLMEngine.from_config(config, model_name_or_path, tokenizer)
    raise ValueError(f"unknown engine backend {config.backend!r}; accepted values: hf, vllm")


def full_state_items(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the model's state dict, gathering sharded (FSDP/DTensor) tensors."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        yield from state.items()
        return
    # state_dict, like the distributed path: tied weights appear under every name.
    for name, tensor in model.state_dict().items():
        yield name, tensor.detach()


def sync_weights(engine: RolloutEngine, model: torch.nn.Module, step: int | None = None) -> float:
    """Push ``model``'s full weights into ``engine``; returns the seconds it took.

    ``step`` is recorded on the engine (``engine.synced_step``) so callers can skip a sync when
    the engine already holds that step's weights.
    """
    start = time.perf_counter()
    engine.load_weights(full_state_items(model))
    if step is not None:
        engine.synced_step = step  # type: ignore[attr-defined]
    return time.perf_counter() - start
