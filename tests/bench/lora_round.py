"""LoRA on SmolLM2-135M-Instruct (``../shared/models/smollm2.sh DIR``), float32, CPU.

1. Peak memory and time of one GRPO round with a KL reference, LoRA (rank 16, every projection)
   and QLoRA (the same adapters on an nf4 base) vs full fine-tuning: HF engine, 8 GSM8K prompts × 4 samples of 64 tokens, ``kl_coef`` 0.04
   (full: a frozen reference copy; LoRA: the base with the adapters off), AdamW. Each setting
   runs in a fresh subprocess; the figures are the tensor state it holds, counted exactly
   (parameters, reference copy, gradients, optimizer state, the engine's copy), the process's
   peak RSS (``ru_maxrss``) and its RSS after the round (allocator pages included), and the
   round's seconds.
2. The HF engine's two LoRA paths: a peft copy receiving the adapter (``lora_sync: adapter``) vs
   a plain copy receiving merged weights (``merge``): seconds per sync and per generation of the
   same 32 samples; on a full-precision base and on a 4-bit one.

    python tests/bench/lora_round.py --model DIR      # prints both tables
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


def one_round(model: str, setting: str) -> dict:
    """Fit one GRPO round in this process; peak RSS (GiB) and seconds."""
    import lightning as L
    import torch

    from lit_align.data import RolloutDataModule
    from lit_align.engines import EngineConfig, SamplingConfig
    from lit_align.lora import LoRAConfig
    from lit_align.losses import LossConfig
    from lit_align.modules import GRPOModule
    from lit_align.quantization import QuantizationConfig

    torch.manual_seed(0)
    lora = setting in ("lora", "qlora")
    module = GRPOModule(
        model,
        dtype="float32",
        loss=LossConfig(kl_coef=0.04),
        lora=LoRAConfig(rank=16, alpha=32) if lora else None,
        quantization=QuantizationConfig() if setting == "qlora" else None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5),
    )
    data = RolloutDataModule(
        train_source=str(DATA),
        template="gsm8k_chat",
        limit=8,
        group_size=4,
        rollout_batch_size=32,
        train_batch_size=32,
        micro_batch_size=8,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=64, min_new_tokens=64, stop=[]),
        engine=EngineConfig(backend="hf", max_batch_size=32),
        zero_signal_rounds=None,
    )
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, reload_dataloaders_every_n_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    # Tensor state the run holds, counted exactly: the module's parameters (a full run's
    # reference copy included), their gradients, the optimizer's state, the engine's copy.
    tensors = list(module.parameters()) + list(data.engine.model.parameters())
    four_bit = []  # 4-bit weights: packed codes (among the parameters), block scales, code book
    for p in module.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            four_bit += [p] + [v for v in state.as_dict(packed=True).values() if torch.is_tensor(v)]
    tensors += [t for t in four_bit if not isinstance(t, torch.nn.Parameter)]
    tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for state in trainer.optimizers[0].state.values():
        tensors += [v for v in state.values() if torch.is_tensor(v)]
    state_gib = sum(t.numel() * t.element_size() for t in tensors) / 2**30
    four_bit_gib = sum(t.numel() * t.element_size() for t in four_bit) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    with open("/proc/self/statm") as f:  # what the run holds after its round: weights, engine,
        held = int(f.read().split()[1]) * resource.getpagesize() / 2**30  # reference, optimizer
    with tempfile.TemporaryDirectory() as tmp:  # what --ckpt_path resumes from (after the peak)
        trainer.save_checkpoint(f"{tmp}/last.ckpt")
        checkpoint = Path(f"{tmp}/last.ckpt").stat().st_size / 2**20
    return {
        "peak_gib": peak,
        "held_gib": held,
        "seconds": seconds,
        "trainable": trainable,
        "checkpoint_mib": checkpoint,
        "state_gib": state_gib,
        "four_bit_gib": four_bit_gib,
        "engine_gib": sum(p.numel() * p.element_size() for p in data.engine.model.parameters())
        / 2**30,
    }


def hf_paths(model: str) -> dict:
    """Seconds per sync and per generation of the HF engine's adapter and merge paths, on a
    full-precision base (LoRA) and on a 4-bit one (QLoRA)."""
    import torch

    from lit_align.lora import LoRAConfig
    from lit_align.modules import SFTModule
    from lit_align.quantization import QuantizationConfig

    out = {}
    for setting in ("lora", "qlora"):
        torch.manual_seed(0)
        quantization = QuantizationConfig() if setting == "qlora" else None
        module = SFTModule(
            model, dtype="float32", lora=LoRAConfig(rank=16, alpha=32), quantization=quantization
        )
        for mode, row in _engine_paths(module, model).items():
            out[f"{setting} {mode}"] = row
    return out


def _engine_paths(module, model: str) -> dict:
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import format_prompt
    from lit_align.engines import EngineConfig, SamplingConfig, build_engine, sync_weights

    tok = module.tokenizer
    texts = [
        format_prompt("gsm8k_chat", e.question, tok) for e in load_examples(str(DATA), limit=8)
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=64, min_new_tokens=64, stop=[])
    out = {}
    for mode in ("adapter", "merge"):
        config = EngineConfig(backend="hf", max_batch_size=32, lora_sync=mode)
        engine = build_engine(config, module.model, tok, model)
        syncs, gens = [], []
        for step in range(3):
            syncs.append(sync_weights(engine, module.model, step))
            start = time.perf_counter()
            engine.generate(prompts, sampling)
            gens.append(time.perf_counter() - start)
        out[mode] = {"sync_s": min(syncs), "generate_s": min(gens)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="SmolLM2-135M-Instruct folder")
    parser.add_argument("--one", choices=["full", "lora", "qlora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(args.model, args.one)))
        return
    rows = {}
    for name in ("full", "lora", "qlora"):
        done = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--one", name],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print("one GRPO round with a KL reference, SmolLM2-135M float32, CPU, HF engine")
    print(
        f"{'':<6}{'trainable':>12}{'tensors GiB':>13}{'4-bit GiB':>11}{'engine GiB':>12}"
        f"{'peak RSS GiB':>14}{'held GiB':>10}{'seconds':>9}{'ckpt MiB':>10}"
    )
    for name, row in rows.items():
        print(
            f"{name:<6}{row['trainable']:>12,}{row['state_gib']:>13.2f}{row['four_bit_gib']:>11.2f}"
            f"{row['engine_gib']:>12.2f}{row['peak_gib']:>14.2f}{row['held_gib']:>10.2f}"
            f"{row['seconds']:>9.1f}{row['checkpoint_mib']:>10.1f}"
        )
    full = rows["full"]
    for name in ("lora", "qlora"):
        row = rows[name]
        print(
            f"{name} / full: tensors {row['state_gib'] / full['state_gib']:.2f}×, "
            f"peak {row['peak_gib'] / full['peak_gib']:.2f}×, held "
            f"{row['held_gib'] / full['held_gib']:.2f}×, time {row['seconds'] / full['seconds']:.2f}×, "
            f"checkpoint {row['checkpoint_mib'] / full['checkpoint_mib']:.3f}×"
        )
    print("\nHF engine, LoRA paths (best of 3): 8 prompts × 4 samples × 64 tokens", flush=True)
    for mode, row in hf_paths(args.model).items():
        print(f"{mode:<14} sync {row['sync_s']:.3f} s   generate {row['generate_s']:.2f} s")


if __name__ == "__main__":
    main()
