"""reasoning_gym:<task> sources: parsed, seeded, graded by the task's own scorer in the sandbox,
and taken by eval and the training DataModules."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("reasoning_gym")

from lit_align.data.reasoning_gym import parse_source
from lit_align.data.sources import load_examples
from lit_align.rewards.reasoning_gym import GymAnswer, ReasoningGymEvaluator

PRODUCTS = "reasoning_gym:products?min_digits=2&max_digits=2"


def _factors(example) -> tuple[int, int]:
    a, b = example.answer.entry["metadata"]["expression"].split(" * ")
    return int(a), int(b)


def test_the_source_is_parsed_with_json_values_and_refuses_what_the_datamodule_sets():
    assert parse_source("reasoning_gym:products?min_digits=2&allow_negation=true&x=a b") == (
        "products",
        {"min_digits": 2, "allow_negation": True, "x": "a b"},
    )
    assert parse_source("reasoning_gym:chain_sum") == ("chain_sum", {})
    with pytest.raises(ValueError, match=r"sets 'seed': the DataModule sets it"):
        parse_source("reasoning_gym:products?seed=3")
    with pytest.raises(ValueError, match=r"names no task"):
        parse_source("reasoning_gym:")


def test_examples_are_seeded_and_their_answers_are_the_tasks():
    examples = load_examples(PRODUCTS, size=16, seed=0)
    again = load_examples(PRODUCTS, size=16, seed=0)
    other = load_examples(PRODUCTS, size=16, seed=1)  # validation's seed (seed + 1)
    assert [e.question for e in examples] == [e.question for e in again]
    for e in examples:  # the oracle answer, checked by hand from the question's factors
        a, b = _factors(e)
        assert 10 <= a <= 99 and 10 <= b <= 99 and f"{a} * {b}" in e.question
        assert isinstance(e.answer, GymAnswer) and e.answer == str(a * b)
    # reasoning-gym draws item i from seed + i: hashed seeds keep the two sets apart.
    assert not {e.question for e in examples} & {e.question for e in other}
    assert len(load_examples(PRODUCTS, size=16, seed=0, limit=4)) == 4


def test_bad_tasks_and_settings_say_what_exists():
    with pytest.raises(ValueError, match=r"unknown reasoning-gym task 'product'.*products"):
        load_examples("reasoning_gym:product", size=2)
    with pytest.raises(ValueError, match=r"no setting max_digit; its settings: .*max_digits"):
        load_examples("reasoning_gym:products?max_digit=2", size=2)
    with pytest.raises(ValueError, match=r"rejects the settings: max_digits must be >= min_digits"):
        load_examples("reasoning_gym:products?min_digits=3&max_digits=2", size=2)


def test_the_tasks_scorer_grades_in_the_sandbox_with_partial_credit():
    examples = load_examples(PRODUCTS, size=4, seed=0)
    truth = [e.answer for e in examples]
    products = [a * b for a, b in map(_factors, examples)]
    completions = [
        f" x </think> <answer> {products[0]} </answer>",
        f"<answer>{products[1]}0</answer>",  # contains the oracle: len(p) / (len(p) + 1)
        "<answer> 12 </answer>",
        f"{products[3]}",  # no <answer>: nothing extracted, not graded
    ]
    evaluator = ReasoningGymEvaluator()
    scores, metrics = evaluator.compute_rewards(["q"] * 4, completions, truth)
    partial = len(str(products[1])) / (len(str(products[1])) + 1)
    assert scores[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    assert scores[:, 1].tolist() == pytest.approx([1.0, partial, 0.0, 0.0])
    rows = evaluator.breakdown(scores)
    assert [evaluator.is_correct(r) for r in rows] == [True, False, False, False]
    assert metrics["accuracy"] == 0.25 and metrics["format_reward"] == 0.75
    with pytest.raises(TypeError, match=r"reasoning_gym:<task> sources only"):
        evaluator.compute_rewards(["q"], ["<answer>1</answer>"], ["1"])


def test_the_ground_truth_survives_pickling_as_dataloader_workers_need():
    answer = load_examples(PRODUCTS, size=1, seed=0)[0].answer
    back = pickle.loads(pickle.dumps(answer))
    assert back == answer and back.entry == answer.entry and back.task == "products"


def test_datamodules_and_eval_pick_the_tasks_scorer(tmp_path, tiny_tokenizer):
    from lit_align.data import RolloutDataModule, SFTDataModule
    from lit_align.data.base import default_evaluator
    from lit_align.engines.base import SamplingConfig
    from lit_align.evaluation import evaluate
    from tests.test_evaluation import ScriptedEngine

    grpo = RolloutDataModule(PRODUCTS, template="demo", group_size=2, rollout_batch_size=4,
                             train_batch_size=4)  # fmt: skip
    assert isinstance(grpo.evaluator, ReasoningGymEvaluator)
    sft = SFTDataModule("synthetic:addition", val_source=PRODUCTS, template="demo")
    assert isinstance(sft.evaluator, ReasoningGymEvaluator)
    boxed = default_evaluator("question_only", PRODUCTS)
    assert boxed.answer_format == "boxed"

    examples = load_examples(PRODUCTS, size=2, seed=0)
    right = str(int(examples[0].answer))
    engine = ScriptedEngine([[f" m </think> <answer> {right} </answer>"], [" m </think> no"]])
    records, metrics = evaluate(
        engine, tiny_tokenizer, examples, grpo.evaluator, SamplingConfig(), "demo", tmp_path
    )
    assert metrics["accuracy"] == 0.5 and [r["correct"] for r in records] == [True, False]
    assert records[0]["ground_truth"] == right  # the oracle answer, written as text
    assert (tmp_path / "generations.jsonl").read_text().count(f'"ground_truth": "{right}"') == 1


def test_a_grpo_round_on_a_reasoning_gym_task_is_graded_by_its_scorer(tmp_path):
    """A real round: the tiny model answers products in the demo format, the task's scorer
    (in its sandbox pool) grades them; the untrained model's answers score 0, a planted right
    answer 1."""
    from lit_align.modules import GRPOModule
    from tests.helpers import cpu_trainer, tiny_rollout_data

    data = tiny_rollout_data(train_source=PRODUCTS, evaluator=None, synthetic_size=16)
    module = GRPOModule("tiny", dtype="float32")
    cpu_trainer(default_root_dir=tmp_path, max_epochs=1).fit(module, data)
    assert isinstance(data.evaluator, ReasoningGymEvaluator)
    records = data.latest_round.records
    assert len(records) == 16 and all(isinstance(r["ground_truth"], GymAnswer) for r in records)
    assert all(r["reward"] == 0.0 for r in records)
    truth = records[0]["ground_truth"]
    scores, _ = data.evaluator.compute_rewards(["p"], [f"<answer>{truth}</answer>"], [truth])
    assert scores[0, 1].item() == 1.0
