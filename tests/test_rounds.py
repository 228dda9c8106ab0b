"""run_round: one round as a pure function, usable without Lightning (GRPO, expert iteration)."""

from __future__ import annotations

import torch

from lit_align.engines import HFEngine, SamplingConfig
from lit_align.rewards import RewardEvaluator
from lit_align.rounds import AdvantageConfig, run_round


class Length(RewardEvaluator):
    """Reward = characters / 10; "correct" when longer than 3 characters."""

    component_names = ("length",)
    total_weights = (1.0,)
    correct_component = "length"

    def score(self, prompts, completions, answers):
        return torch.tensor([[max(len(c) - 3, 0) / 10.0] for c in completions])


def test_a_round_aligns_samples_records_and_metrics(tiny_model, tiny_tokenizer):
    engine = HFEngine.from_policy(tiny_model, tiny_tokenizer)
    prompts = ["1 + 2 =", "3 + 4 ="]
    ids = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=6, seed=3)
    result = run_round(engine, Length(), prompts, ids, ["3", "7"], sampling)
    assert len(result.samples) == len(result.records) == 8
    for k, (s, r) in enumerate(zip(result.samples, result.records, strict=True)):
        assert s.prompt_ids == ids[k // 4] and r["prompt"] == prompts[k // 4]
        assert r["sample_index"] == k % 4 and s.reward == r["reward"]
        assert s.truncated == (r["finish_reason"] == "length") and s.keep
    adv = torch.tensor([s.advantage for s in result.samples]).view(2, 4)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(2), atol=1e-5)  # centered per group
    m = result.metrics
    assert m["rollout/accuracy"] == sum(r["correct"] for r in result.records) / 8
    assert m["rollout/kept_frac"] == 1.0 and m["time/rollout_s"] > 0
    # Same seed, same round; the filters only change what the loss keeps.
    masked = run_round(
        engine, Length(), prompts, ids, ["3", "7"], sampling, AdvantageConfig(mask_truncated=True)
    )
    assert [s.completion_ids for s in masked.samples] == [s.completion_ids for s in result.samples]
    assert [s.keep for s in masked.samples] == [not s.truncated for s in result.samples]


def test_one_summary_of_graded_records_by_hand():
    from lit_align.metrics import summarize_records

    records = [
        {
            "correct": True,
            "formatted": True,
            "reward": 1.0,
            "length": 4,
            "mean_entropy": 0.5,
            "finish_reason": "stop",
        },
        {
            "correct": False,
            "formatted": True,
            "reward": 0.5,
            "length": 8,
            "mean_entropy": 1.5,
            "finish_reason": "length",
        },
        {
            "correct": False,
            "formatted": False,
            "reward": 0.0,
            "length": 6,
            "mean_entropy": 1.0,
            "finish_reason": "stop",
        },
    ]
    assert summarize_records(records) == {
        "accuracy": 1 / 3,
        "format_rate": 2 / 3,
        "reward_mean": 0.5,
        "response_length_mean": 6.0,
        "response_length_min": 4.0,
        "response_length_max": 8.0,
        "response_length_correct": 4.0,
        "response_length_incorrect": 7.0,
        "token_entropy_mean": 1.0,
        "truncated_frac": 1 / 3,
    }
    assert summarize_records([])["accuracy"] == 0.0


def test_step_micro_batches_are_length_sorted_and_each_step_keeps_its_samples():
    """Sorting inside an optimizer step changes padding only: the step's samples are those of
    the seeded shuffle, cut into steps, as before."""
    import random

    from lit_align.data.buffer import RolloutBuffer, StepBatchSampler
    from lit_align.rounds import Rollout

    rng = random.Random(1)
    samples = [
        Rollout(
            prompt_ids=[1] * rng.randint(3, 30),
            completion_ids=[2] * rng.randint(1, 20),
            rollout_log_probs=[],
            reward=0.0,
            advantage=0.0,
            keep=True,
            truncated=False,
        )
        for _ in range(32)
    ]
    sampler = StepBatchSampler(RolloutBuffer(samples), 16, 4, passes=2, seed=3)
    size = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
    batches = [[i for i, _, _ in b] for b in sampler]
    assert len(batches) == 16
    for step in range(4):
        flat = [i for b in batches[4 * step : 4 * step + 4] for i in b]
        assert [size[i] for i in flat] == sorted(size[i] for i in flat)
        p, s = divmod(step, 2)  # pass p, its s-th step of 16 samples
        order = list(range(32))
        random.Random(3 * 7_919 + p).shuffle(order)
        assert sorted(flat) == sorted(order[16 * s : 16 * s + 16])
