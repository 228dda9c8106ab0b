"""Lightning callbacks of lit_align (installed as ``lit_align.callbacks``)."""

from lit_align.callbacks.hf_export import HFExport

__all__ = ["HFExport"]
