"""Lightning callbacks of lit_align (installed as ``lit_align.callbacks``)."""

from lit_align.callbacks.hf_export import HFExport
from lit_align.callbacks.monitoring import GenerationSamples, Throughput
from lit_align.callbacks.progress import ProgressLog

__all__ = ["GenerationSamples", "HFExport", "ProgressLog", "Throughput"]
