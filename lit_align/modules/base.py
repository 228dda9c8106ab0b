"""Shared LightningModule base: the policy model, optimizers, and validation by generation."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from lit_align.contracts import task_data
from lit_align.engines.base import SamplingConfig
from lit_align.environments.episodes import run_episodes
from lit_align.evaluation import log_generations
from lit_align.grading import grade_episodes
from lit_align.lora import LoRAConfig, apply_lora
from lit_align.metrics import GRAD_NORM, LR, PER_RECORD, TOKENS_PER_S, VAL, prefixed
from lit_align.models import AttnImpl, load_model_and_tokenizer
from lit_align.ops import CausalLMLogProbs
from lit_align.quantization import QuantizationConfig, check_quantized_device

__all__ = ["PolicyModule"]


def _default_optimizer(params: Iterable[Any]) -> torch.optim.Optimizer:
    # CS336 assignment 5 defaults: AdamW(β=(0.9, 0.95), weight decay 0), lr 1e-5.
    return torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)


class PolicyModule(L.LightningModule):
    """A Hugging Face causal LM being trained, with validation by generation.

    Args:
        model_name_or_path: hub id, local directory or ``tiny:…`` (a tiny model built in code).
        dtype: model dtype (``auto``, ``bfloat16``, ``float32``…); Lightning's ``precision`` applies
            on top.
        attn_implementation: ``auto`` (flash_attention_2 when installed on CUDA, else sdpa).
        gradient_checkpointing: recompute activations in backward to save memory.
        trust_remote_code: run modeling code shipped with the checkpoint (only if you trust it).
        optimizer: a callable ``params -> Optimizer``; default AdamW(lr 1e-5, β=(0.9, 0.95), wd 0).
        lr_scheduler: a callable ``optimizer -> scheduler`` stepped every optimizer step, e.g.
            ``lit_align.modules.schedules.WarmupCosine``; None: constant rate.
        val_sampling: sampling for validation (default greedy, 1024 new tokens; stop None: the
            DataModule's template's stop strings, e.g. ``</answer>``).
        log_samples: generations written to TensorBoard text at each validation.
        logprob_chunk_tokens: tokens per LM-head chunk in the log-prob computation.
        validate_at_start: run the validation pass once before the first training step and log
            it at step 0, so curves start from the initial model.
        lora: train LoRA adapters (:class:`~lit_align.lora.LoRAConfig`: rank, alpha, dropout,
            target modules) on the frozen base instead of every weight; only the adapters reach
            the optimizer and the checkpoints. None: full fine-tuning.
        quantization: QLoRA: load the frozen base in 4 bits through bitsandbytes
            (:class:`~lit_align.quantization.QuantizationConfig`: bits 4, type nf4|fp4); needs
            ``lora``; one device, CUDA or CPU. Engines and exports get the dequantized base.
    """

    def __init__(
        self,
        model_name_or_path: str,
        dtype: str = "auto",
        attn_implementation: AttnImpl = "auto",
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
        optimizer: OptimizerCallable = _default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        val_sampling: SamplingConfig | None = None,
        log_samples: int = 4,
        logprob_chunk_tokens: int = 256,
        validate_at_start: bool = False,
        lora: LoRAConfig | None = None,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        for key, value in list(self.hparams.items()):
            if is_dataclass(value):  # plain values, so checkpoints load with weights_only=True
                self.hparams[key] = asdict(value)  # type: ignore[call-overload]
        self.model_name_or_path = model_name_or_path
        self.optimizer_fn = optimizer
        self.lr_scheduler_fn = lr_scheduler
        if isinstance(val_sampling, dict):  # from a checkpoint's hyperparameters
            val_sampling = SamplingConfig(**val_sampling)
        self.val_sampling = val_sampling or SamplingConfig(temperature=0.0, max_new_tokens=1024)
        self.log_samples = log_samples
        self.validate_at_start = validate_at_start
        if isinstance(lora, dict):  # from a checkpoint's hyperparameters
            lora = LoRAConfig(**lora)
        if isinstance(quantization, dict):
            quantization = QuantizationConfig(**quantization)
        if quantization is not None and lora is None:
            raise ValueError(
                "model.init_args.quantization needs model.init_args.lora: a 4-bit base is frozen, "
                "only adapters train on it (add lora: {rank: 16})"
            )
        self.quantization = quantization
        self._load_kwargs = {
            "dtype": dtype,
            "attn_implementation": attn_implementation,
            "gradient_checkpointing": gradient_checkpointing,
            "trust_remote_code": trust_remote_code,
            "quantization": quantization,
        }
        # The model is loaded now so checkpoints restore into it; FSDP2 shards it in configure_model.
        model, self.tokenizer = load_model_and_tokenizer(model_name_or_path, **self._load_kwargs)
        model.train()  # from_pretrained returns eval mode, which also disables HF checkpointing
        self.lora = lora
        if lora is not None:
            model = apply_lora(model, lora)
            # Checkpoints hold the adapters only: the frozen base is reloaded from its source.
            self.strict_loading = False
        self.policy = CausalLMLogProbs(model, logprob_chunk_tokens)
        self.val_metrics = nn.ModuleDict({name: MeanMetric() for name in PER_RECORD})
        self._val_records: list[dict[str, Any]] = []
        self._step_clock: float | None = None

    @property
    def model(self) -> nn.Module:
        """The Hugging Face causal LM being trained (a peft ``PeftModel`` with ``lora``)."""
        return self.policy.model

    def _trainable_names(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora is None:
            return
        trainable = self._trainable_names()
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora is None:
            return
        missing = sorted(self._trainable_names() - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} adapter tensors of this LoRA model (e.g. "
                f"{missing[0]}): it was written with other lora settings or without lora"
            )

    def setup(self, stage: str) -> None:
        if self.quantization is not None:
            check_quantized_device(self.trainer.strategy.root_device, self.trainer.world_size)

    def configure_model(self) -> None:
        """FSDP2 (Lightning ``ModelParallelStrategy``): shard each decoder layer, then the root."""
        mesh = self.device_mesh
        if mesh is None or getattr(self, "_sharded", False):
            return
        from torch.distributed.fsdp import fully_shard

        dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        for root in self.sharded_roots():
            hf = root.model.get_base_model() if self.lora is not None else root.model
            for layer in hf.model.layers:
                fully_shard(layer, mesh=dp_mesh)
            fully_shard(root, mesh=dp_mesh)
        self._sharded = True

    def sharded_roots(self) -> list[nn.Module]:
        """Log-prob modules to shard under FSDP2 (the policy; GRPO adds its reference model)."""
        return [self.policy]

    # ------------------------------------------------------------------ optimization

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_fn(p for p in self.model.parameters() if p.requires_grad)
        if self.lr_scheduler_fn is None:
            return optimizer
        scheduler = self.lr_scheduler_fn(optimizer)
        if getattr(scheduler, "total_steps", 0) is None:
            scheduler.total_steps = self.total_optimizer_steps()
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def total_optimizer_steps(self) -> int:
        """Optimizer steps of the whole fit (for schedules)."""
        return int(self.trainer.estimated_stepping_batches)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
            if grads
            else 0.0
        )
        self.log(GRAD_NORM, norm, on_step=True, on_epoch=False)
        self.log(LR, optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def log_throughput(self, tokens: int) -> None:
        """Log tokens/s between consecutive training steps."""
        now = time.perf_counter()
        if self._step_clock is not None:
            self.log(
                TOKENS_PER_S,
                tokens / max(now - self._step_clock, 1e-9),
                on_step=True,
                on_epoch=False,
            )
        self._step_clock = now

    # ------------------------------------------------------------------ validation by generation

    def on_validation_start(self) -> None:
        # The DataModule is asked once per validation, through its declared contract.
        data = task_data(self.trainer)
        self._val_engine = data.synced_engine(self.global_step)
        self._val_engine.wake_up()
        self._val_task = (data.evaluator, data.task_sampling(self.val_sampling))
        self._val_records = []

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        evaluator, sampling = self._val_task
        # Episodes, as in rollouts: one completion each unless the task has an environment.
        settings = task_data(self.trainer).episode_settings(batch)
        episodes = run_episodes(
            self._val_engine, [row["prompt_ids"] for row in batch], sampling,
            settings.environment, settings.examples, settings.tokenizer,
            settings.max_total_tokens,
        )  # fmt: skip
        records, _, _ = grade_episodes(
            evaluator,
            [row["prompt"] for row in batch],
            [row["answer"] for row in batch],
            episodes,
            sampling.n,
        )
        for name, value in PER_RECORD.items():
            values = [value(r) for r in records]
            self.val_metrics[name].update(torch.tensor(values, device=self.device))
        if len(self._val_records) < self.log_samples:
            self._val_records.extend(records)

    @torch.no_grad()
    def on_train_start(self) -> None:
        if not self.validate_at_start or self.global_step > 0:
            return
        loaders = task_data(self.trainer).val_dataloader()
        if not loaders:
            return
        self.on_validation_start()
        for i, batch in enumerate(loaders):
            self.validation_step(batch, i)
        metrics = prefixed(VAL, {name: m.compute() for name, m in self.val_metrics.items()})
        for m in self.val_metrics.values():
            m.reset()
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=0)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            self.log(
                f"{VAL}/{name}", metric.compute(), prog_bar=name == "accuracy", sync_dist=False
            )
            metric.reset()
        writer = getattr(self.logger, "experiment", None) if self.logger else None
        if self.trainer.is_global_zero and self._val_records and hasattr(writer, "add_text"):
            log_generations(
                self._val_records[: self.log_samples],
                writer,
                self.global_step,
                self.log_samples,
                "val",
                scalars=False,  # the val/* metrics cover every validation sample
            )
