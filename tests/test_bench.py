"""The TRL comparison benchmark runs from the command line (its generation part needs no TRL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tests" / "bench" / "trl_compare.py"


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "gsm8k").exists(), reason="needs ../shared"
)
def test_trl_compare_generation_part_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(BENCH), "--only", "gen", "--pairs", "2", "--prompts", "2"]
    cmd += ["--group", "3", "--new_tokens", "5", "--sft_examples", "4", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    gen = result["gen"]
    # 2 prompts × 3 samples × exactly 5 tokens on both sides, timed twice each
    assert [p["ours"]["tokens"] for p in result["gen_raw"]] == [30, 30]
    assert [p["peer"]["tokens"] for p in result["gen_raw"]] == [30, 30]
    assert gen["time_ratio"] > 0 and gen["ours_tok_s"] > 0
    assert 2.0e6 < result["parameters"] < 4.0e6  # the ~3 M-parameter tiny Qwen2
    assert "| generation |" in proc.stdout
