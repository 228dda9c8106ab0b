"""evaluation: pass@k arithmetic, summaries, files written, log_generations."""

from __future__ import annotations

import json

import pytest

from lit_align.data.sources import Example
from lit_align.engines.base import Completion, SamplingConfig
from lit_align.evaluation import evaluate, log_generations, pass_at_k, summarize
from lit_align.rewards import MathEvaluator


def test_pass_at_k_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


class ScriptedEngine:
    """Returns prepared responses, so the metrics can be computed by hand."""

    def __init__(self, responses):
        self.responses = responses

    def generate(self, prompt_token_ids, sampling):
        out = []
        for i in range(len(prompt_token_ids)):
            for j in range(sampling.n):
                text = self.responses[i][j]
                out.append(
                    Completion(i, list(range(len(text.split()))), text, [0.0], [0.5], "stop")
                )
        return out

    weight_version = 0

    def load_weights(self, named, version):
        pass

    def sleep(self):
        pass

    def wake_up(self):
        pass


def test_evaluate_writes_records_and_category_counts(tmp_path, tiny_tokenizer):
    examples = [Example("1+1?", "2"), Example("2+2?", "4")]
    ok2, bad, unformatted = (
        " x </think> <answer> 2 </answer>",
        " x </think> <answer> 5 </answer>",
        "4",
    )
    engine = ScriptedEngine([[ok2, bad], [unformatted, " y y </think> <answer> 4 </answer>"]])
    records, metrics = evaluate(
        engine, tiny_tokenizer, examples, MathEvaluator(), SamplingConfig(n=2), "demo", tmp_path
    )
    assert (
        metrics["count_format1_answer1"],
        metrics["count_format1_answer0"],
        metrics["count_format0_answer0"],
    ) == (2, 1, 1)
    assert metrics["accuracy"] == 0.5 and metrics["format_rate"] == 0.75
    # pass@1 = mean of c/n = (1/2 + 1/2)/2; pass@2 = 1 for both examples
    assert metrics["pass@1"] == 0.5 and metrics["pass@2"] == 1.0 and metrics["mean@2"] == 0.5
    # lengths (whitespace words here): correct 5 and 6, incorrect 5 and 1
    assert metrics["response_length_correct"] == 5.5 and metrics["response_length_incorrect"] == 3.0
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["prompt"] == "User: 1+1?\nAssistant: <think>"
    assert json.loads((tmp_path / "metrics.json").read_text())["count_format0_answer0"] == 1
    assert summarize(records, 2) == {
        k: v for k, v in metrics.items() if not k.startswith("reward/")
    }


def test_log_generations_to_a_writer():
    class Writer:
        def __init__(self):
            self.text, self.scalars = {}, {}

        def add_text(self, tag, text, step):
            self.text[tag] = text

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = value

    records = [
        {
            "prompt": "p",
            "response": "r",
            "ground_truth": "1",
            "reward": 1.0,
            "format_reward": 1.0,
            "answer_reward": 1.0,
            "correct": True,
            "length": 4,
            "mean_entropy": 0.5,
        },
        {
            "prompt": "p",
            "response": "s",
            "ground_truth": "1",
            "reward": 0.0,
            "format_reward": 1.0,
            "answer_reward": 0.0,
            "correct": False,
            "length": 8,
            "mean_entropy": 1.5,
        },
    ]
    w = Writer()
    summary = log_generations(records, w, step=3)
    assert summary == {
        "response_length_mean": 6.0,
        "response_length_correct": 4.0,
        "response_length_incorrect": 8.0,
        "token_entropy_mean": 1.0,
    }
    assert (
        "generations/sample_1" in w.text
        and "**ground truth** `1`" in w.text["generations/sample_0"]
    )
    assert w.scalars["generations/response_length_correct"] == 4.0


class ToolScriptedEngine(ScriptedEngine):
    """Turn 1 calls the calculator; later turns (those with per-episode seeds) answer with
    ``answer``. Keeps every later turn's ids, to check the tool's result was fed back in."""

    CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "37 * 48"}}</tool_call>'

    def __init__(self, answer: str) -> None:
        self.answer, self.later_ids = answer, []

    def generate(self, prompt_token_ids, sampling, seeds=None):
        if seeds is None:
            return [Completion(i, [5, 6, 7], self.CALL, [-0.5] * 3, [0.1] * 3, "stop")
                    for i in range(len(prompt_token_ids))]  # fmt: skip
        self.later_ids += [list(ids) for ids in prompt_token_ids]
        return [Completion(i, [8, 9], self.answer, [-0.25] * 2, [0.1] * 2, "stop")
                for i in range(len(prompt_token_ids))]  # fmt: skip


def test_eval_runs_multi_turn_episodes_and_records_their_transcripts(tmp_path, tiny_tokenizer):
    from lit_align.environments import ToolEnvironment
    from lit_align.evaluation import format_summary
    from lit_align.rewards import GSM8kEvaluator

    engine = ToolScriptedEngine("<reasoning>\n.\n</reasoning>\n<answer>\n1776\n</answer>\n")
    env = ToolEnvironment(tools=["calculator"])
    examples = [Example("What is 37 * 48?", "1776")]
    records, metrics = evaluate(
        engine, tiny_tokenizer, examples, GSM8kEvaluator(), SamplingConfig(), "gsm8k_chat",
        tmp_path, environment=env,
    )  # fmt: skip
    assert '"name": "calculator"' in records[0]["prompt"]  # the tools are listed in the prompt
    assert "1776" in tiny_tokenizer.decode(engine.later_ids[0])  # the result went back in
    assert records[0]["transcript"] == [
        {"role": "assistant", "content": ToolScriptedEngine.CALL},
        {"role": "tool", "name": "calculator", "content": "1776"},
        {"role": "assistant", "content": engine.answer},
    ]
    assert records[0]["response"] == engine.answer and metrics["accuracy"] == 1.0
    assert metrics["episodes/turns_per_episode"] == 2.0
    assert metrics["episodes/tool_call_episode_frac"] == 1.0
    assert "episodes: turns_per_episode 2" in format_summary(metrics)
    saved = json.loads((tmp_path / "generations.jsonl").read_text())
    assert saved["transcript"][1]["content"] == "1776"

    class Writer:
        def __init__(self):
            self.text = {}

        def add_text(self, tag, text, step):
            self.text[tag] = text

    writer = Writer()
    log_generations(records, writer, scalars=False)
    assert "[tool calculator] 1776" in writer.text["generations/sample_0"]
