"""Push the policy's weights into the rollout engine before every round."""

from __future__ import annotations

import lightning as L

from lit_align.rollout.weights import sync_weights

__all__ = ["WeightSync"]


class WeightSync(L.Callback):
    """Sync the engine at fit start and after each epoch (one epoch is one rollout round).

    Lightning calls ``on_train_epoch_end(e)`` and then ``train_dataloader()`` for round e+1, so
    the engine receives the new weights in time. Full weights are gathered from a plain, DDP,
    FSDP1 or FSDP2 module (every rank joins the gather); the sync time goes to
    ``time/weight_sync_s``. A sync is skipped when the engine already holds the current step's
    weights (its DataModule syncs it when built, and validation may have synced it since).
    """

    def _sync(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        engine = trainer.datamodule.engine
        if engine.weight_version == trainer.global_step:
            return
        seconds = sync_weights(engine, pl_module.model, trainer.global_step)
        if trainer.logger is not None:
            trainer.logger.log_metrics({"time/weight_sync_s": seconds}, step=trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Syncs after a checkpoint restore; a freshly built engine is already synced by its DataModule.
        self._sync(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(trainer, pl_module)
