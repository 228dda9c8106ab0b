"""DDP and FSDP2 on 2 CPU processes (gloo) give the weights of a single process on the same data,
for SFT, GRPO and LoRA GRPO with a KL term (weight sync included), and GRPO with a colocated vLLM
engine per rank (`vllm`).
Slow: each run starts 2 processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "dist" / "parity.py"
TOLERANCE = 1e-5


def _run(task: str, mode: str, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--task", task, "--mode", mode, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{task}/{mode} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sft", "grpo", "grpo_lora"])
def test_ddp_and_fsdp2_match_a_single_process(task, tmp_path):
    single = _run(task, "single", tmp_path / "single.pt")
    start = None
    for mode in ("ddp", "fsdp2"):
        other = _run(task, mode, tmp_path / f"{mode}.pt")
        assert other["global_step"] == single["global_step"] > 0
        assert other["weights"].keys() == single["weights"].keys()
        for name, w in single["weights"].items():
            torch.testing.assert_close(
                other["weights"][name], w, rtol=0, atol=TOLERANCE, msg=f"{mode}: {name}"
            )
        if task != "sft":  # the engine received exactly the policy's (merged) weights
            assert other["engine_max_diff"] == 0.0, mode
    if task != "sft":
        assert single["engine_max_diff"] == 0.0
    # The runs really trained: weights (LoRA: the adapters) moved away from their start.
    from lit_align.models import build_tiny_model

    start, _ = build_tiny_model()
    init = dict(start.named_parameters())
    if task == "grpo_lora":
        adapters = [w for n, w in single["weights"].items() if ".lora_B." in n]
        assert len(adapters) == 2 * 7 and min(w.abs().max().item() for w in adapters) > 1e-4
        return
    moved = max((single["weights"][n] - init[n].detach()).abs().max().item() for n in init)
    assert moved > 1e-3


@pytest.mark.slow
@pytest.mark.vllm
def test_colocated_vllm_engines_on_2_ranks_match_a_single_process(tmp_path):
    """Each rank owns a vLLM engine (external_launcher, in the trainer's process group)."""
    single = _run("grpo_vllm", "single", tmp_path / "single.pt")
    assert single["engine_max_diff"] < 1e-4  # the engine's log-probs are the final policy's
    for mode in ("ddp", "fsdp2"):
        other = _run("grpo_vllm", mode, tmp_path / f"{mode}.pt")
        assert other["global_step"] == single["global_step"] > 0
        for name, w in single["weights"].items():
            torch.testing.assert_close(
                other["weights"][name], w, rtol=0, atol=TOLERANCE, msg=f"{mode}: {name}"
            )
        assert other["engine_max_diff"] < 1e-4, mode
