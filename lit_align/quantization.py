"""QLoRA's frozen base (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"):
the base model's linear layers in 4 bits through bitsandbytes, LoRA adapters trained on top.

Only the base is quantized; the adapters, the embeddings, the norms and the LM head keep the
model's dtype. What leaves a quantized policy for an engine or an export is always full precision:
:func:`dequantized` gives the weights the trainer really computes with (the 4-bit codes times
their scales), so an engine loaded with them samples from the trainer's own function.

bitsandbytes 0.50 runs 4-bit layers on CUDA and on the CPU (checked here: forward, backward into
the adapters, generation); other devices get a one-line error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = [
    "QUANTIZED_DEVICES",
    "QuantizationConfig",
    "bnb_config",
    "check_quantized_device",
    "dequantized",
    "is_quantized",
    "plain_config",
    "quant_state_key",
    "train_safe",
]

# Devices where bitsandbytes 0.50's 4-bit layers run (and where lit_align tests them).
QUANTIZED_DEVICES = ("cpu", "cuda")
_INSTALL_HINT = (
    "model.init_args.quantization needs bitsandbytes: pip install 'lit-align[qlora]' "
    "(bitsandbytes>=0.50)"
)


@dataclass(frozen=True)
class QuantizationConfig:
    """Load the frozen base model in 4 bits (``model.init_args.quantization``; needs ``lora``).

    Attributes:
        bits: 4 (the only width lit_align trains on: QLoRA's).
        type: ``nf4`` (4-bit NormalFloat, QLoRA's) or ``fp4``.
        double_quant: quantize the per-block scales too (~0.4 bits per weight saved).
        compute_dtype: the dtype of the 4-bit layers' matmuls; ``auto``: the model's ``dtype``.
    """

    bits: int = 4
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise ValueError(
                f"quantization.bits is {self.bits}: lit_align trains on 4-bit bases only "
                "(QLoRA); use bits: 4, or drop quantization"
            )
        if self.type not in ("nf4", "fp4"):
            raise ValueError(f"quantization.type must be nf4 or fp4, got {self.type!r}")


def bnb_config(config: QuantizationConfig, model_dtype: torch.dtype | str) -> Any:
    """The ``transformers.BitsAndBytesConfig`` for ``from_pretrained``; a one-line ImportError
    naming the extra when bitsandbytes is missing."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    from transformers import BitsAndBytesConfig

    compute = config.compute_dtype if config.compute_dtype != "auto" else model_dtype
    if compute == "auto":  # the checkpoint's dtype is not known before loading
        compute = torch.float32
    if isinstance(compute, str):
        compute = getattr(torch, compute)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def train_safe(model: torch.nn.Module) -> torch.nn.Module:
    """Keep the 4-bit weights in the layout whose matmul has a backward.

    bitsandbytes repacks a layer's weights for its AVX512-BF16 CPU kernel the first time the
    layer runs in eval mode without grad (validation, a reference pass), and from then on the
    layer multiplies through that kernel even in training, which has no autograd formula (torch
    warns: "an autograd kernel was not registered"), so the gradient reaching the adapters of
    earlier layers would be wrong. The trainer's layers are kept on the differentiable path; an
    engine's copy may repack freely.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (a Hugging Face model, or a peft model around one) has quantized layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_quantized", False))


def dequantized(param: torch.Tensor) -> torch.Tensor:
    """A 4-bit parameter's full-precision values (codes × block scales), in its compute dtype;
    any other tensor as it is."""
    state = getattr(param, "quant_state", None)
    if state is None:
        return param
    import bitsandbytes.functional as bnb_f

    return bnb_f.dequantize_4bit(param.data, state).to(state.dtype)


def quant_state_key(name: str, quantized_weights: set[str]) -> bool:
    """Whether a state-dict key is bookkeeping of a 4-bit weight (``….weight.absmax``,
    ``….weight.quant_map``…) rather than a tensor of the model."""
    head, sep, _ = name.rpartition(".weight.")
    return bool(sep) and f"{head}.weight" in quantized_weights


def plain_config(config: Any) -> Any:
    """A copy of a Hugging Face model config without its quantization settings, for a
    full-precision copy of the model (an engine's, an export's)."""
    config = copy.deepcopy(config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    return config


def check_quantized_device(device: torch.device, world_size: int) -> None:
    """A one-line error when a quantized base is trained where lit_align cannot: on a device
    bitsandbytes 0.50 does not run 4-bit layers on, or sharded/replicated over several ranks."""
    if device.type not in QUANTIZED_DEVICES:
        raise ValueError(
            f"model.init_args.quantization: bitsandbytes runs 4-bit layers on "
            f"{' and '.join(QUANTIZED_DEVICES)}, not {device.type}; train on one of those, or "
            "drop quantization (LoRA alone still trains adapters only)"
        )
    if world_size > 1:
        raise ValueError(
            f"model.init_args.quantization runs on one device, this run has {world_size} ranks: "
            "drop quantization (LoRA alone works with DDP and FSDP2) or train on one device"
        )
