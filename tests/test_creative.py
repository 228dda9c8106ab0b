"""Creative writing with a judge reward: schema-constrained replies, averaged judge samples,
rule checks, judge-check on constant / random / length-biased judges over HTTP, and GRPO with a
judge that does not discriminate reported as such."""

from __future__ import annotations

import json

import pytest
import torch

from lit_align.data import RolloutDataModule
from lit_align.data.sources import load_examples
from lit_align.data.templates import format_prompt
from lit_align.engines import SamplingConfig
from lit_align.judge_check import run_judge_check
from lit_align.modules import GRPOModule
from lit_align.rewards import JudgeEvaluator, OpenAIChatJudge
from lit_align.rewards.judge_server import RuleJudgeServer, ServedRuleJudge
from lit_align.rewards.story_checks import length_penalty, repetition_penalty, starts_with_line
from tests.figures import figure
from tests.helpers import cpu_trainer
from tests.openai_stub import StubServer

C = ("creativity", "coherence", "engagement")


def test_opening_lines_source_and_story_templates(tiny_tokenizer):
    examples = load_examples("creative:opening_lines")
    assert len(examples) == 64 and all(e.question == e.answer for e in examples)
    line = examples[0].question
    text = format_prompt("story", line)
    assert text.endswith("Story: " + line)  # the policy continues the story from its first line
    chat = format_prompt("story_chat", line, tiny_tokenizer)
    assert line in chat and chat.rstrip().endswith("<|im_start|>assistant")
    with pytest.raises(ValueError, match=r"has no verifier: set data\.init_args\.evaluator"):
        RolloutDataModule("creative:opening_lines", template="story")


def test_structured_replies_send_the_criteria_schema():
    reply = lambda body, i: json.dumps({"creativity": 4, "coherence": 2, "engagement": 5})  # noqa: E731
    with StubServer(reply, models=("judge",)) as server:
        judge = OpenAIChatJudge(server.url, "judge", api_key_env=None)
        ev = JudgeEvaluator(judge, structured=True)
        scores = ev.score(["p"], ["A story."], ["Once."])
    assert scores.tolist() == [[4.0, 2.0, 5.0]]
    fmt = server.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == list(C) and schema["additionalProperties"] is False
    assert schema["properties"]["coherence"] == {"type": "integer", "minimum": 1, "maximum": 5}
    assert ev.last_batch["judge_tokens"] == 7  # the server's usage


def test_judge_samples_are_averaged_and_unparseable_ones_left_out():
    calls = iter(["Score: 2", "Score: 4", "no idea", "Score: 5"] * 2)
    ev = JudgeEvaluator(_Scripted(calls), samples=2)
    scores = ev.score(["p", "p"], ["story one", "story two"], ["o", "o"])
    # story one: replies 1 and 3 of the batch ("Score: 2", "no idea") -> 2; story two: 4 and 5 -> 4.5
    assert ev.judge_scores(scores).tolist() == [2.0, 4.5]
    assert ev.last_batch["judge_unparseable"] == 1.0


class _Scripted:
    def __init__(self, replies):
        self.replies = replies

    def complete(self, prompts, json_schema=None):
        return [next(self.replies) for _ in prompts]


def test_rule_checks_by_hand():
    line = "The cat came home."
    assert starts_with_line("the cat came HOME, and then", line) == 1.0
    assert starts_with_line("A cat came home.", line) == 0.0
    # "a b c a b c": trigrams abc bca cab abc -> 1 of 4 repeats
    assert repetition_penalty("a b c a b c") == -0.25
    assert length_penalty(" ".join(["w"] * 15), max_words=10) == -0.5
    assert length_penalty("short story", max_words=10) == 0.0
    ev = JudgeEvaluator(_Scripted(iter(["Score: 4"])), checks=["starts_with_line", "repetition"])
    scores = ev.score(["p"], [line + " a b c a b c"], [line])
    assert ev.component_names == (*C, "starts_with_line", "repetition")
    # "the cat came home a b c a b c": 10 words, 8 trigrams, "a b c" once again -> -1/8
    assert scores.tolist()[0][3:] == pytest.approx([1.0, -1 / 8])
    assert ev.total(scores).item() == pytest.approx(4.0 + 1.0 - 1 / 8)


@pytest.mark.parametrize(
    ("rule", "expect", "warning"),
    [
        ("constant", {"score_std": 0.0, "zero_variance_group_frac": 1.0}, "does not discriminate"),
        ("length", {"repeat_identical_frac": 1.0}, "scores follow length"),
        ("random", {"repeat_identical_frac": 0.0}, "mostly noise"),
    ],
)
def test_judge_check_tells_bad_judges_apart(rule, expect, warning, tmp_path, capsys):
    report = run_judge_check(backend="rule", rule=rule, output=str(tmp_path / "r.json"))
    for key, value in expect.items():
        assert report[key] == pytest.approx(value), key
    assert any(warning in w for w in report["warnings"]), report["warnings"]
    assert report["stories"] == 9 and report["unparseable"] == 0
    if rule == "length":
        assert report["length_correlation"] > 0.95
        assert report["mean_by_label"]["repetitive"] > report["mean_by_label"]["good"]
    assert f"WARNING: {report['warnings'][0]}" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["warnings"] == report["warnings"]


def test_rule_judge_server_speaks_the_openai_protocol():
    server = RuleJudgeServer("length")
    try:
        judge = OpenAIChatJudge(server.url, server.model, api_key_env=None)
        assert judge.engine.check() == ["rule-length"]
        ev = JudgeEvaluator(judge)
        short, long = ev.judge_scores(
            ev.score(["p", "p"], ["one two", " ".join(["w"] * 50)], ["o", "o"])
        )
    finally:
        server.close()
    assert short.item() == pytest.approx(1.08) and long.item() == pytest.approx(3.0)


def test_grpo_with_a_constant_judge_reports_zero_signal(tmp_path):
    torch.manual_seed(0)
    ev = JudgeEvaluator(ServedRuleJudge("constant"), prepend_opening=True)
    dm = RolloutDataModule(
        "creative:opening_lines", template="story", evaluator=ev, val_source=None, group_size=4,
        rollout_batch_size=16, train_batch_size=16, micro_batch_size=16, zero_signal_rounds=2,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=6),
    )  # fmt: skip
    module = GRPOModule("tiny", dtype="float32")
    trainer = cpu_trainer(default_root_dir=tmp_path, limit_val_batches=None)
    with pytest.warns(Warning, match="no learning signal: in 2 rounds in a row") as seen:
        trainer.fit(module, dm)
    assert dm.latest_round.metrics["rollout/judge_zero_variance_group_frac"] == 1.0
    assert dm.latest_round.metrics["rollout/judge_within_group_std"] == 0.0
    assert any("lit_align judge-check" in str(w.message) for w in seen)


def test_model_judge_answers_with_a_local_frozen_model():
    from lit_align.rewards import ModelJudge

    judge = ModelJudge("tiny", dtype="float32", max_new_tokens=4)
    ev = JudgeEvaluator(judge)
    scores = ev.score(["p", "p"], ["a story", "another"], ["o", "o"])
    assert scores.shape == (2, 3)  # a random tiny judge is unparseable: the fallback, counted
    assert ev.last_batch["judge_unparseable"] == 2.0 and judge.last_tokens == 8


@pytest.mark.slow
def test_the_creative_demo_reward_rises_and_its_stories_are_kept(tmp_path):
    """configs/demo/grpo_creative.yaml from the command line (~70 s on 2 cores): the judge is
    served over HTTP by the run; the README's figures, ±0.05."""
    import subprocess
    import sys
    from pathlib import Path

    from lit_align.report import run_report
    from lit_align.report.runs import Run

    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "grpo_creative.yaml"
    subprocess.run(
        [sys.executable, "-m", "lit_align.cli", "fit", "--config", str(config),
         "--trainer.enable_progress_bar=false"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    run = Run("demo", tmp_path / "runs" / "demo_grpo_creative" / "version_0")
    val = run.scalars["val/reward"].values
    assert val[0] == pytest.approx(figure("creative_demo_first_val_reward"), abs=0.05)
    assert val[-1] == pytest.approx(figure("creative_demo_final_val_reward"), abs=0.05)
    assert max(run.scalars["rollout/judge_zero_variance_group_frac"].values) == 0.0
    assert run.scalars["rollout/judge_unparseable"].values[-1] == 0.0
    samples = (run.dir / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 4 * 12  # 4 stories per round, 12 rounds
    report = run_report([run.dir], output=tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Samples, early and late" in text and "late (round 11)" in text
    assert "curves_00" in report.figures


def _token(token, alternatives):
    import math

    return {
        "token": token,
        "logprob": math.log(alternatives.get(token, 1e-9)),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()],
    }


def test_weighted_scores_are_the_expected_score_token():
    """G-Eval: at ' 3' the judge puts 0.5 on 3, 0.3 on 4, 0.1 on 2, 0.1 elsewhere -> 2.9/0.9;
    at ' 4': 0.6 on 4, 0.4 on 5 -> 4.4. Non-score alternatives are left out and renormalized."""
    text = '{"creativity": 3, "coherence": 4}'
    content = [
        _token('{"', {'{"': 1.0}),
        _token("creativity", {"creativity": 1.0}),
        _token('":', {'":': 1.0}),
        _token(" 3", {" 3": 0.5, " 4": 0.3, " 2": 0.1, " x": 0.1}),
        _token(', "', {', "': 1.0}),
        _token("coherence", {"coherence": 1.0}),
        _token('":', {'":': 1.0}),
        _token(" 4", {" 4": 0.6, " 5": 0.4}),
        _token("}", {"}": 1.0}),
    ]
    with StubServer(lambda body, i: text, models=("judge",), logprobs=lambda t: content) as server:
        judge = OpenAIChatJudge(server.url, "judge", api_key_env=None, top_logprobs=5)
        ev = JudgeEvaluator(judge, criteria=("creativity", "coherence"), weighted=True)
        scores = ev.score(["p"], ["story"], ["o"])
        plain = JudgeEvaluator(judge, criteria=("creativity", "coherence")).score(
            ["p"], ["s"], ["o"]
        )
    assert scores.tolist()[0] == pytest.approx([2.9 / 0.9, 4.4])
    assert plain.tolist()[0] == [3.0, 4.0]  # the integers, without weighting
    assert server.bodies[0]["logprobs"] is True and server.bodies[0]["top_logprobs"] == 5
    assert ev.last_batch["judge_weighted"] == 1.0
    with pytest.raises(ValueError, match="top_logprobs=20"):
        JudgeEvaluator(_Scripted(iter([])), weighted=True)


def test_rankings_parse_and_become_evenly_spread_scores():
    from lit_align.rewards.judge_rank import parse_ranking, rank_scores

    assert parse_ranking('{"ranking": ["C", "A", "B"]}', 3) == [2, 0, 1]
    assert parse_ranking("Best: C > A > B", 3) == [2, 0, 1]
    assert parse_ranking('{"ranking": ["C", "C", "B"]}', 3) is None  # not a permutation
    assert parse_ranking("no idea", 3) is None
    assert rank_scores([2, 0, 1], 1.0, 5.0) == [3.0, 1.0, 5.0]  # C first (5), A (3), B last (1)


def test_ranked_scoring_orders_each_group():
    ev = JudgeEvaluator(ServedRuleJudge("length"), scoring="ranked", group_size=3)
    stories = ["a b", "a b c d e f", "a b c d", "x", "x x x", "x x"]
    scores = ev.judge_scores(ev.score(["p"] * 6, stories, ["o"] * 3 + ["q"] * 3))
    assert scores.tolist() == [1.0, 5.0, 3.0, 1.0, 5.0, 3.0]  # longest first in each group
    assert (
        ev.extra_metrics(ev.score(["p"] * 6, stories, ["o"] * 6))["judge_zero_variance_group_frac"]
        == 0.0
    )
    with pytest.raises(ValueError, match="needs group_size"):
        JudgeEvaluator(ServedRuleJudge("length"), scoring="ranked").score(["p"], ["s"], ["o"])


def test_judge_check_ranked_exposes_a_position_biased_judge():
    # a constant judge ranks in the order shown; shuffled passes then disagree with each other
    report = run_judge_check(backend="rule", rule="constant", scoring="ranked")
    assert report["zero_variance_group_frac"] == 0.0 and report["repeat_identical_frac"] == 0.0
    assert any("mostly noise" in w for w in report["warnings"])
    assert report["replies"] == 9  # 3 groups x 3 passes
