"""``WeightSync``, kept so that configs written for lit_align ≤ 0.1 still load.

The DataModule that owns the engine now syncs it before every round and every validation
(:meth:`lit_align.data.base.TaskDataModule.synced_engine`); this callback does nothing but say so.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["WeightSync"]


class WeightSync(L.Callback):
    """Deprecated: remove it from ``trainer.callbacks``; weight sync needs no callback."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rank_zero_warn(
            "lit_align.callbacks.WeightSync is no longer needed and does nothing: the DataModule "
            "syncs its engine before every round and every validation. Remove it from "
            "trainer.callbacks.",
            category=DeprecationWarning,
        )
