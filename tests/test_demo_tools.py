"""The README's tool-use demo (configs/demo/grpo_tools.yaml), from a clean directory: a tiny
model learns to call the calculator (slow: ~4 min on 2 cores, its warm start included)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import check_demo_accuracy, fit_demo


@pytest.mark.slow
def test_the_tool_demo_learns_to_call_the_calculator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, scalars = fit_demo("demo_tools", "configs/demo/grpo_tools.yaml")
    check_demo_accuracy(scalars, "tools_demo_final_val_accuracy")
    calls = scalars["rollout/tool_call_episode_frac"]
    assert calls[-1] >= calls[0] + 0.2, calls  # it learned to call the tool
    assert scalars["rollout/turns_per_episode"][-1] > 1.8  # call, result, answer
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["round"] == max(r["round"] for r in rows)]
    solved = [r for r in last if r["correct"] and "transcript" in r]
    assert solved, last  # a late episode answers from the calculator's result
    call, result, answer = solved[0]["transcript"]
    assert '"name": "calculator"' in call["content"] and result["role"] == "tool"
    assert result["content"] in answer["content"]
    assert (tmp_path / "runs" / "demo_tools_init" / "config.json").exists()  # the warm start
