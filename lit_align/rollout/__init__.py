"""Rollout engines: the :class:`RolloutEngine` protocol, :class:`HFEngine`; the vLLM engine is lazy."""

from lit_align.rollout.base import Completion, RolloutEngine, SamplingConfig
from lit_align.rollout.hf import HFEngine

__all__ = ["Completion", "HFEngine", "RolloutEngine", "SamplingConfig"]
