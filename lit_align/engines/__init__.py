"""Rollout engines: the :class:`RolloutEngine` protocol, :class:`HFEngine`, the engine factory and
weight sync; text-level engines (:class:`LocalTextEngine`, :class:`OpenAICompatibleEngine` for
OpenAI-compatible endpoints); the vLLM engine (``lit_align.engines.vllm``) is imported only when built."""

from lit_align.engines.base import (
    Completion,
    GenerationInterrupted,
    RolloutEngine,
    SamplingConfig,
    StaleWeightsError,
    check_weight_version,
)
from lit_align.engines.factory import EngineConfig, build_engine
from lit_align.engines.hf import HFEngine
from lit_align.engines.openai_api import APIError, OpenAICompatibleEngine
from lit_align.engines.text import LocalTextEngine, RequestFailed, TextEngine, TextSample
from lit_align.engines.weights import full_state_items, max_logprob_gap, sync_weights

__all__ = [
    "APIError",
    "Completion",
    "EngineConfig",
    "GenerationInterrupted",
    "HFEngine",
    "LocalTextEngine",
    "OpenAICompatibleEngine",
    "RequestFailed",
    "RolloutEngine",
    "SamplingConfig",
    "StaleWeightsError",
    "TextEngine",
    "TextSample",
    "build_engine",
    "check_weight_version",
    "full_state_items",
    "max_logprob_gap",
    "sync_weights",
]
