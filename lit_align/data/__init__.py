"""Data: prompt templates, sources (GSM8K, MATH, JSONL, HF datasets, synthetic), DataModules."""

from lit_align.data.sft import SFTDataModule
from lit_align.data.sources import DataError, Example, load_examples

__all__ = ["DataError", "Example", "SFTDataModule", "load_examples"]
