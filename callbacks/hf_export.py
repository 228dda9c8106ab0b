"""Save the trained policy in Hugging Face format at the end of fit."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import lightning as L

from lit_align.engines.weights import full_state_items
from lit_align.lora import adapter_state, is_lora, merged_items, save_adapter
from lit_align.models import save_model_folder

log = logging.getLogger(__name__)

__all__ = ["HFExport"]


class HFExport(L.Callback):
    """``save_pretrained`` of the model and tokenizer when fit ends, loadable by transformers and vLLM.

    A LoRA policy is written as its peft adapter folder (``adapter_config.json`` naming the base,
    ``adapter_model.safetensors``, the tokenizer), which peft, vLLM's ``LoRARequest`` and
    ``lit_align eval --model DIR`` load; with ``merged`` also as a whole model with the adapter
    merged in (``DIRNAME_merged``).

    Args:
        dirname: folder name inside the run's log directory, or, with ``in_log_dir: false``, a
            path of its own (relative to the working directory).
        in_log_dir: place ``dirname`` inside the run's log directory.
        safe_serialization: write safetensors.
        merged: LoRA only: also write the merged model (safetensors; a QLoRA run's 4-bit base
            is written dequantized).
    """

    def __init__(
        self,
        dirname: str = "hf_model",
        in_log_dir: bool = True,
        safe_serialization: bool = True,
        merged: bool = False,
    ) -> None:
        self.dirname = dirname
        self.in_log_dir = in_log_dir
        self.safe_serialization = safe_serialization
        self.merged = merged
        self.path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = Path(trainer.log_dir or trainer.default_root_dir)
        path = root / self.dirname if self.in_log_dir else Path(self.dirname)
        self.path = path
        if is_lora(pl_module.model):
            self._export_lora(trainer, pl_module, path)
            return
        state = dict(full_state_items(pl_module.model))  # every rank joins a sharded gather
        if trainer.is_global_zero:
            path.mkdir(parents=True, exist_ok=True)
            pl_module.model.save_pretrained(
                path, state_dict=state, safe_serialization=self.safe_serialization
            )
            pl_module.tokenizer.save_pretrained(path)
            log.info("saved the Hugging Face model to %s", path)

    def _export_lora(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path) -> None:
        model = pl_module.model
        state = adapter_state(model)  # every rank joins a sharded gather
        merged = dict(merged_items(model)) if self.merged else None
        if not trainer.is_global_zero:
            return
        config = model.peft_config[model.active_adapter]
        quantization = getattr(pl_module, "quantization", None)  # QLoRA: the base's 4-bit settings
        save_adapter(
            path, config, state, base=str(pl_module.model_name_or_path),
            quantization=asdict(quantization) if quantization is not None else None,
        )  # fmt: skip
        pl_module.tokenizer.save_pretrained(path)
        log.info("saved the LoRA adapter to %s", path)
        if merged is not None:
            whole = path.with_name(path.name + "_merged")
            base = model.get_base_model()  # a 4-bit base is written dequantized, as plain weights
            save_model_folder(
                whole, merged.items(), base.config, base.generation_config, pl_module.tokenizer
            )
            log.info("saved the merged Hugging Face model to %s", whole)
