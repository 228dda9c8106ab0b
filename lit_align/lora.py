"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through
peft: the config block, the wrapped policy, and the tensors an engine needs from it.

The policy stays one ``PeftModel``: the frozen base weights with low-rank adapters injected into
the target layers. What leaves it:

- :func:`adapter_items` — the trainable tensors only (names as in the PeftModel's state dict), for
  an engine that holds a copy of the same PeftModel (the HF engine);
- :func:`adapter_state` — the adapter in peft's file format (``lora_A.weight`` names), for an
  engine that serves adapters itself (vLLM's ``LoRARequest``) and for export;
- :func:`merged_items` — the base model's weights under their Hugging Face names with each
  layer's delta ``scaling · B @ A`` added (or the base weights alone: ``merge=False``), for an
  engine that cannot serve adapters and for a merged export.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_align.quantization import dequantized, plain_config, quant_state_key

__all__ = [
    "LoRAConfig",
    "adapter_items",
    "adapter_state",
    "apply_lora",
    "is_adapter_folder",
    "is_lora",
    "merged_items",
    "merged_model",
    "save_adapter",
]


# Beside a QLoRA adapter: the 4-bit settings of the base it was trained on.
QUANTIZATION_FILE = "base_quantization.json"


@dataclass(frozen=True)
class LoRAConfig:
    """Train low-rank adapters instead of every weight (``model.init_args.lora`` in a config).

    Attributes:
        rank: r, the adapters' rank.
        alpha: the adapters' scale numerator (scaling = alpha / rank).
        dropout: dropout on the adapters' input (0 keeps training and the engine's sampling on
            the same function).
        target_modules: the layers that get adapters: ``all-linear`` (every linear projection but
            the LM head, peft's default for causal LMs) or a list of module names (``q_proj``…).
        modules_to_save: modules trained in full beside the adapters (e.g. ``[lm_head]``); their
            copies travel with the adapter.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1 (e.g. 8), got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0 (e.g. 16), got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora.target_modules names no module; e.g. all-linear")


def apply_lora(model: torch.nn.Module, config: LoRAConfig) -> Any:
    """``model`` (a Hugging Face causal LM) wrapped as a peft ``PeftModel`` with fresh adapters;
    only the adapters (and ``modules_to_save``) require grad. Adapter initialisation draws from
    torch's global generator (seed it first for a reproducible run)."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        modules_to_save=config.modules_to_save,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def is_lora(model: Any) -> bool:
    """Whether ``model`` is a peft model with adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def adapter_items(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the trainable tensors (adapters, ``modules_to_save``), by their
    names in the PeftModel's state dict; sharded (DTensor) ones gathered one at a time."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for name, tensor in model.state_dict().items():
        if name in trainable:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            yield name, tensor.detach()


def adapter_state(model: Any) -> dict[str, torch.Tensor]:
    """The adapter as peft saves it (``…q_proj.lora_A.weight``: no adapter name), on the CPU."""
    from peft import get_peft_model_state_dict

    full = dict(adapter_items(model))
    return {k: v.cpu() for k, v in get_peft_model_state_dict(model, state_dict=full).items()}


@torch.no_grad()
def merged_items(model: Any, merge: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of the base model, each adapted layer's weight plus its delta
    (``merge``) or alone; ``modules_to_save`` contribute their trained copy when merging. Tied
    weights appear under every name, as in the base model's own state dict. A 4-bit base
    (QLoRA) gives its dequantized weights, the values the trainer computes with."""
    base = model.get_base_model()
    adapter = model.active_adapter
    params = dict(base.named_parameters(remove_duplicate=False))
    quantized = {name for name, p in params.items() if hasattr(p, "quant_state")}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or (merge and ".original_module." in name):
            continue
        if (not merge and ".modules_to_save." in name) or quant_state_key(name, quantized):
            continue
        hf_name = (
            name.replace(".base_layer.", ".")
            .replace(".original_module.", ".")
            .replace(f".modules_to_save.{adapter}.", ".")
        )
        if name in quantized:
            tensor = dequantized(params[name])
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        if merge and name.endswith(".base_layer.weight"):
            layer = base.get_submodule(name.removesuffix(".base_layer.weight"))
            if adapter in getattr(layer, "lora_A", {}):
                delta = layer.get_delta_weight(adapter)  # [out, in]; sharded: a DTensor
                if hasattr(delta, "full_tensor"):
                    delta = delta.full_tensor()
                tensor = tensor + delta.to(tensor.dtype)
        yield hf_name, tensor.detach()


def merged_model(model: Any) -> Any:
    """A plain Hugging Face model (no peft layers, no 4-bit ones) holding :func:`merged_items`,
    on ``model``'s device. Built from the config, not deep-copied: a sharded (FSDP2) policy
    cannot be copied, and a 4-bit one would merge into its 4-bit codes."""
    from transformers import AutoModelForCausalLM

    base = model.get_base_model()
    embeddings = base.get_input_embeddings().weight
    local = embeddings.to_local() if hasattr(embeddings, "to_local") else embeddings
    plain = AutoModelForCausalLM.from_config(plain_config(base.config), dtype=local.dtype)
    plain.load_state_dict(dict(merged_items(model)))  # every rank joins a sharded gather
    plain.generation_config = copy.deepcopy(base.generation_config)
    return plain.to(local.device)


def save_adapter(
    folder: str | Path,
    config: Any,
    state: dict[str, torch.Tensor],
    base: str | None = None,
    quantization: dict[str, Any] | None = None,
) -> None:
    """Write an adapter in peft's folder format (``adapter_config.json``,
    ``adapter_model.safetensors``), which peft, vLLM's ``LoRARequest`` and ``lit_align eval``
    load; ``base`` is recorded as the base model to load it on, ``quantization`` (QLoRA) as the
    4-bit settings of the base it was trained on (``base_quantization.json``: ``lit_align eval``
    rebuilds that base, dequantized, so it evaluates the trained function)."""
    import json

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if base is not None:
        config = copy.copy(config)
        config.base_model_name_or_path = base
    config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "adapter_model.safetensors")
    if quantization is not None:
        (folder / QUANTIZATION_FILE).write_text(json.dumps(quantization, indent=1) + "\n")


def is_adapter_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a peft adapter (not a whole model)."""
    return (Path(path) / "adapter_config.json").is_file()
