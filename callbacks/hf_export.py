"""Save the trained policy in Hugging Face format at the end of fit."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

from lit_align.engines.weights import full_state_items

log = logging.getLogger(__name__)

__all__ = ["HFExport"]


class HFExport(L.Callback):
    """``save_pretrained`` of the model and tokenizer when fit ends, loadable by transformers and vLLM.

    Args:
        dirname: folder name inside the run's log directory, or, with ``in_log_dir: false``, a
            path of its own (relative to the working directory).
        in_log_dir: place ``dirname`` inside the run's log directory.
        safe_serialization: write safetensors.
    """

    def __init__(
        self, dirname: str = "hf_model", in_log_dir: bool = True, safe_serialization: bool = True
    ) -> None:
        self.dirname = dirname
        self.in_log_dir = in_log_dir
        self.safe_serialization = safe_serialization
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = root / self.dirname if self.in_log_dir else Path(self.dirname)
        state = dict(full_state_items(pl_module.model))  # every rank joins a sharded gather
        if trainer.is_global_zero:
            path.mkdir(parents=True, exist_ok=True)
            pl_module.model.save_pretrained(
                path, state_dict=state, safe_serialization=self.safe_serialization
            )
            pl_module.tokenizer.save_pretrained(path)
            log.info("saved the Hugging Face model to %s", path)
        self.path = path
