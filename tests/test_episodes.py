"""Multi-turn episodes (lit_align.environments.episodes): token in, token out; environment
tokens masked out of the loss in every aggregation; the environment's limits."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lit_align.aggregation import AGGREGATIONS
from lit_align.data.buffer import RolloutBuffer, StepBatchSampler
from lit_align.engines import HFEngine, SamplingConfig
from lit_align.environments import SingleTurn
from lit_align.environments.episodes import episode_metrics, render_reply, run_episodes
from lit_align.losses import LossConfig, policy_loss
from lit_align.ops import get_response_log_probs
from lit_align.rounds import Rollout
from tests.helpers import SHORT_TURNS, ScriptedEnvironment


def Scripted(max_turns: int = 3, turns_before_done: int = 2) -> ScriptedEnvironment:
    return ScriptedEnvironment(max_turns, turns_before_done)


@pytest.fixture
def engine(tiny_model, tiny_tokenizer):
    return HFEngine.from_policy(tiny_model.float(), tiny_tokenizer)


ENDS = SHORT_TURNS


def _prompts(tokenizer):
    texts = ["What is 2 + 3?", "What is 7 + 1?"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_episodes_are_token_in_token_out_and_the_engine_log_probs_are_the_trainers(
    engine, tiny_model, tiny_tokenizer
):
    prompts = _prompts(tiny_tokenizer)
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=5, stop=ENDS)
    env = Scripted()
    episodes = run_episodes(engine, prompts, sampling, env, tokenizer=tiny_tokenizer)
    assert [e.prompt_index for e in episodes] == [0, 0, 1, 1]
    model = tiny_model.float()
    for e in episodes:
        assert len(e.token_ids) == len(e.sampled) == len(e.log_probs)
        # Between the turns: exactly the rendered reply (the turn's end, the tool message, the
        # next assistant turn's opening), mask 0, log-prob 0.
        if e.replies:
            reply = render_reply(tiny_tokenizer, e.replies[0])
            first = e.sampled.index(0)  # the first environment token
            assert e.token_ids[first : first + len(reply)] == reply
            assert "<|im_start|>tool" in tiny_tokenizer.decode(reply)
        # Teacher forcing the whole transcript gives the engine's log-probs at sampled tokens.
        ids = torch.tensor([prompts[e.prompt_index] + e.token_ids])
        ours = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"][0]
        ours = ours[len(prompts[e.prompt_index]) - 1 :]
        where = torch.tensor(e.sampled, dtype=torch.bool)
        torch.testing.assert_close(ours[where], torch.tensor(e.log_probs)[where], rtol=0, atol=1e-5)
        assert all(lp == 0.0 for lp, s in zip(e.log_probs, e.sampled, strict=True) if not s)
    multi = [e for e in episodes if len(e.turns) == 3]
    assert multi, "the scripted environment answered twice: three turns"
    assert all(e.finish_reason in ("stop", "length") for e in episodes)


def test_the_model_tokens_are_never_decoded_and_encoded_again(engine, tiny_tokenizer, monkeypatch):
    """With a tokenizer whose decode → encode does not round-trip, each turn still continues
    from the exact ids: prompt + the engine's sampled ids + the rendered replies."""
    real_decode = tiny_tokenizer.decode
    monkeypatch.setattr(tiny_tokenizer, "decode", lambda ids, **kw: real_decode(ids, **kw) + " 1")
    sample = [35, 21, 204]
    assert tiny_tokenizer(tiny_tokenizer.decode(sample))["input_ids"] != sample  # no round trip
    calls = []
    generate = engine.generate

    def recording(ids, sampling, seeds=None):
        out = generate(ids, sampling, seeds)
        calls.append(([list(i) for i in ids], out))
        return out

    monkeypatch.setattr(engine, "generate", recording)
    prompts = _prompts(tiny_tokenizer)
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=5, stop=ENDS)
    episodes = run_episodes(engine, prompts, sampling, Scripted(), tokenizer=tiny_tokenizer)
    later = {
        tuple(ids): c for ids_list, out in calls[1:] for ids, c in zip(ids_list, out, strict=True)
    }
    checked = 0
    for e, first in zip(episodes, calls[0][1], strict=True):  # turn 1: one call, episode order
        prompt = list(prompts[e.prompt_index])
        transcript = list(first.token_ids)
        for reply in e.replies:  # rebuilt from what the engine was given and gave back
            transcript += render_reply(tiny_tokenizer, reply)
            turn = later[tuple(prompt + transcript)]  # the engine was given exactly these ids
            transcript += turn.token_ids
            checked += 1
        assert transcript == e.token_ids
    assert checked > 0


def test_single_turn_episodes_are_the_engines_completions(engine, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    sampling = SamplingConfig(n=3, temperature=1.0, max_new_tokens=6, seed=9)
    completions = engine.generate(prompts, sampling)
    episodes = run_episodes(engine, prompts, sampling)
    for c, e in zip(completions, episodes, strict=True):
        assert e.completion() == c and e.sampled == [1] * len(c.token_ids)
        assert e.turns == [c.text] and not e.replies
    assert SingleTurn().max_turns == 1


def test_later_turns_draw_from_each_episodes_own_stream(engine, tiny_tokenizer, monkeypatch):
    """Every live episode gets a seed of its own after turn 1, so equal transcripts still
    sample different continuations."""
    prompts = _prompts(tiny_tokenizer)[:1]
    calls = []
    generate = engine.generate
    monkeypatch.setattr(
        engine,
        "generate",
        lambda ids, s, seeds=None: calls.append(seeds) or generate(ids, s, seeds),
    )
    hot = SamplingConfig(n=4, temperature=1.5, max_new_tokens=4, seed=1, stop=ENDS)
    run_episodes(engine, prompts, hot, Scripted(turns_before_done=1), tokenizer=tiny_tokenizer)
    assert calls[0] is None  # turn 1: the round's seed, as a single-turn round
    assert len(calls[1]) == len(set(calls[1])) > 1
    same = [prompts[0] + [5, 6, 7]] * 2
    a, b = generate(same, replace(hot, n=1), seeds=calls[1][:2])
    assert a.token_ids != b.token_ids


def test_max_turns_and_max_total_tokens_end_episodes_as_truncated(engine, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=5, seed=2, stop=ENDS)
    chatty = Scripted(max_turns=2, turns_before_done=10)  # always answers
    episodes = run_episodes(engine, prompts, sampling, chatty, tokenizer=tiny_tokenizer)
    assert all(len(e.turns) == 2 and e.finish_reason == "length" for e in episodes)
    short = run_episodes(
        engine, prompts, sampling, Scripted(max_turns=4, turns_before_done=10),
        tokenizer=tiny_tokenizer, max_total_tokens=12,
    )  # fmt: skip
    for e in short:
        assert len(e.token_ids) <= 12 and e.finish_reason == "length"
    metrics = episode_metrics(episodes)
    assert metrics["rollout/turns_per_episode"] == 2.0
    assert metrics["rollout/episode_truncated_frac"] == 1.0
    assert metrics["rollout/tool_calls_per_episode"] == 2.0  # two replies each


# ---------------------------------------------------------------------- the loss mask


def _episode_buffer() -> RolloutBuffer:
    # prompt [5, 6]; completion: 2 sampled, 3 environment, 2 sampled tokens
    sampled = [1, 1, 0, 0, 0, 1, 1]
    rows = [
        Rollout([5, 6], [7, 8, 9, 10, 11, 12, 13], 1.0, 1.0, [-0.5] * 7, True, False, sampled),
        Rollout([5, 6, 4], [7, 8, 9], -1.0, 0.0, [-0.7] * 3, True, False),
    ]
    return RolloutBuffer(rows)


def test_environment_tokens_are_masked_in_the_batch_and_the_normalizers():
    buffer = _episode_buffer()
    batch = buffer.collate([0, 1])
    # Row 0: labels at positions 1..7 are the completion; environment tokens at 3, 4, 5.
    assert batch["completion_mask"][0].tolist() == [0, 1, 1, 0, 0, 0, 1, 1]
    assert batch["response_mask"][1].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    sampler = StepBatchSampler(buffer, step_size=2, micro_batch_size=2, passes=1, seed=0)
    assert sampler.step_counts.tolist() == [[2.0, 4.0 + 3.0]]  # 4 sampled + 3 sampled tokens


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
@pytest.mark.parametrize("loss_type", ["grpo_clip", "reinforce_with_baseline"])
def test_environment_tokens_get_zero_gradient_in_every_aggregation(aggregation, loss_type):
    buffer = _episode_buffer()
    batch = buffer.collate([(0, 2.0, 7.0), (1, 2.0, 7.0)])
    log_probs = torch.full(batch["labels"].shape, -0.6, requires_grad=True)
    config = LossConfig(loss_type, aggregation=aggregation, tis_cap=2.0, kl_coef=0.1)
    loss, _ = policy_loss(
        log_probs,
        batch["response_mask"],
        config,
        raw_rewards=batch["raw_rewards"],
        advantages=batch["advantages"],
        old_log_probs=torch.full_like(log_probs, -0.5),
        ref_log_probs=torch.full_like(log_probs, -0.4),
        rollout_log_probs=batch["rollout_log_probs"],
        token_normalizer=batch["token_normalizer"],
        sequence_normalizer=batch["sequence_normalizer"],
    )
    loss.backward()
    grad = log_probs.grad
    assert grad[0, 3:6].abs().sum() == 0  # the three environment tokens
    assert grad[0, [1, 2, 6, 7]].abs().min() > 0  # the four sampled ones
    assert grad[batch["completion_mask"] == 0].abs().sum() == 0  # nothing outside them


def test_validation_runs_episodes_with_the_tasks_environment(tmp_path):
    from lit_align.modules import GRPOModule
    from tests.helpers import cpu_trainer, tiny_rollout_data

    env = ScriptedEnvironment()
    data = tiny_rollout_data(
        environment=env, val_source="synthetic:addition", val_limit=4, val_batch_size=4
    )
    module = GRPOModule(
        "tiny",
        dtype="float32",
        val_sampling=SamplingConfig(temperature=1.0, max_new_tokens=6, stop=SHORT_TURNS),
    )
    cpu_trainer(default_root_dir=tmp_path, limit_val_batches=1).validate(module, data)
    assert env.answered >= 4  # every validation episode's first turn was answered


def test_expert_iteration_refuses_an_environment():
    from lit_align.data import ExpertIterationDataModule

    with pytest.raises(ValueError, match=r"multi-turn episodes .* train with GRPO"):
        ExpertIterationDataModule("synthetic:addition", environment=ScriptedEnvironment())
