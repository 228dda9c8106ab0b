"""lit_align: SFT, expert iteration and the GRPO family for Hugging Face causal LMs on Lightning."""

__version__ = "0.1.0"
