"""LightningModules: SFTModule (and GRPOModule), over a shared PolicyModule base."""

from lit_align.modules.base import PolicyModule
from lit_align.modules.grpo import GRPOModule
from lit_align.modules.sft import SFTModule

__all__ = ["GRPOModule", "PolicyModule", "SFTModule"]
