"""Data: prompt templates, sources (GSM8K, MATH, JSONL, HF datasets, synthetic), DataModules."""

from lit_align.data.expert import ExpertIterationDataModule
from lit_align.data.rollout import RolloutDataModule
from lit_align.data.sft import SFTDataModule
from lit_align.data.sources import DataError, Example, load_examples

__all__ = [
    "DataError",
    "Example",
    "ExpertIterationDataModule",
    "RolloutDataModule",
    "SFTDataModule",
    "load_examples",
]
