"""One tiny SFT or GRPO job as a single process, or on 2 CPU processes (gloo) under DDP or FSDP2.

    python tests/dist/parity.py --task grpo --mode ddp --out weights.pt

``grpo_vllm`` is the GRPO job with a colocated vLLM engine on each rank (needs vLLM);
``grpo_lora`` trains LoRA adapters (rank 4) with a KL term (the reference: the adapters off).

Saves the final full weights (rank 0). tests/test_distributed.py runs every mode and compares.
The global batch is the same in every mode: one process accumulates twice as many micro-batches.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lit_align.cli import close_process_group  # noqa: E402
from lit_align.data import RolloutDataModule, SFTDataModule  # noqa: E402
from lit_align.lora import LoRAConfig  # noqa: E402
from lit_align.losses import LossConfig  # noqa: E402
from lit_align.modules import GRPOModule, SFTModule  # noqa: E402
from lit_align.rewards import RewardEvaluator  # noqa: E402
from lit_align.engines import SamplingConfig  # noqa: E402
from lit_align.engines import EngineConfig, full_state_items  # noqa: E402

GLOBAL_MICRO_BATCHES = 4  # per optimizer step, over all ranks
MICRO = 4


class DistinctCharacters(RewardEvaluator):
    """A reward that varies for an untrained model: distinct characters in the completion."""

    component_names = ("distinct",)
    total_weights = (1.0,)

    def score(self, prompts, completions, answers):
        return torch.tensor([[len(set(c)) / 10.0] for c in completions])


def _adamw(params):
    return torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)


def _sgd(params):
    # GRPO's gradients are tiny here; Adam's g / (sqrt(v) + eps) would turn last-bit differences of
    # the gradient all-reduce into visible weight differences, so parity is checked with SGD.
    return torch.optim.SGD(params, lr=2.0)


# vLLM's CPU attention kernels need head size >= 32: 64 / 2 heads.
VLLM_TINY = "tiny:hidden_size=64,num_heads=2,num_kv_heads=1"
VLLM_ENGINE = EngineConfig(
    backend="vllm", dtype="float32", kv_cache_memory_bytes=64 * 2**20, max_model_len=128, enforce_eager=True
)


def build(task: str):
    if task in ("grpo", "grpo_vllm", "grpo_lora"):
        vllm = task == "grpo_vllm"
        if task == "grpo_lora":
            lora = {"lora": LoRAConfig(rank=4, alpha=8.0), "loss": LossConfig("grpo_clip", kl_coef=0.05)}
        else:
            lora = {"loss": LossConfig("grpo_clip")}
        module = GRPOModule(VLLM_TINY if vllm else "tiny", dtype="float32", optimizer=_sgd, **lora)
        data = RolloutDataModule(
            train_source="synthetic:addition", template="demo", synthetic_size=64, group_size=4,
            rollout_batch_size=16, train_batch_size=16, micro_batch_size=MICRO, sampling=SamplingConfig(max_new_tokens=8, min_new_tokens=1),
            evaluator=DistinctCharacters(), engine=VLLM_ENGINE if vllm else None,
        )
        return module, data, []
    module = SFTModule("tiny", dtype="float32", optimizer=_adamw, loss_aggregation="token_mean")
    data = SFTDataModule("synthetic:addition", template="demo", synthetic_size=32, micro_batch_size=MICRO)
    return module, data, []


def strategy(mode: str):
    if mode == "single":
        return "auto"
    if mode == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(process_group_backend="gloo")
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["sft", "grpo", "grpo_lora", "grpo_vllm"], required=True)
    parser.add_argument("--mode", choices=["single", "ddp", "fsdp2"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    world = 1 if args.mode == "single" else 2
    L.seed_everything(0)
    module, data, callbacks = build(args.task)
    trainer = L.Trainer(
        accelerator="cpu", devices=world, strategy=strategy(args.mode), max_epochs=2,
        accumulate_grad_batches=GLOBAL_MICRO_BATCHES // world, reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
    )
    trainer.fit(module, data)
    state = {k: v.detach().float().cpu().clone() for k, v in full_state_items(module.model)}  # every rank gathers
    result = {"weights": state, "global_step": trainer.global_step}
    if args.task in ("grpo", "grpo_lora"):  # after the last round's sync the engine holds the final policy
        engine = trainer.datamodule.engine
        from lit_align.engines.weights import sync_weights
        from lit_align.lora import is_lora, merged_items

        sync_weights(engine, module.model, trainer.global_step)
        engine_state = engine.model.state_dict()
        # LoRA: the HF engine holds a plain copy with each adapter merged in (Hugging Face names).
        want = dict(merged_items(module.model)) if is_lora(module.model) else state
        result["engine_max_diff"] = max((engine_state[k].float() - v.float()).abs().max().item() for k, v in want.items())
    if args.task == "grpo_vllm":  # the engine's log-probs are the final policy's
        result["engine_max_diff"] = _vllm_gap(trainer.datamodule.engine, module, state, trainer.global_step)
    if trainer.global_rank == 0:
        torch.save(result, args.out)
    close_process_group()  # else a gloo thread alive at exit aborts the process now and then (exit -6)


def _vllm_gap(engine, module, state, step) -> float:
    from transformers import AutoModelForCausalLM

    from lit_align.engines import SamplingConfig, max_logprob_gap, sync_weights

    sync_weights(engine, module.model, step)
    plain = AutoModelForCausalLM.from_config(module.model.config, dtype=torch.float32)
    plain.load_state_dict(state, strict=False)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    return max_logprob_gap(plain, prompts, engine.generate(prompts, sampling))


if __name__ == "__main__":
    main()
