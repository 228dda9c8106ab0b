"""HFEngine: n samples, stop strings kept, seeding, raw log-probs, weight loading."""

from __future__ import annotations

import pytest
import torch

from lit_align.engines import HFEngine, SamplingConfig
from lit_align.engines.weights import sync_weights
from lit_align.ops import get_response_log_probs


@pytest.fixture()
def engine(tiny_model, tiny_tokenizer):
    return HFEngine.from_policy(tiny_model, tiny_tokenizer, max_batch_size=2)


def _ids(tok, texts):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_n_samples_prompt_major_and_seeded(engine, tiny_tokenizer):
    prompts = _ids(tiny_tokenizer, ["User: What is 1 + 2?", "Hi", "Compute 7"])
    cfg = SamplingConfig(n=3, max_new_tokens=12, seed=5)
    out = engine.generate(prompts, cfg)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in out:
        assert len(c.token_ids) == len(c.log_probs) == len(c.entropy) <= 12
        assert (
            c.text == tiny_tokenizer.decode(c.token_ids, skip_special_tokens=True)
            or c.finish_reason == "stop"
        )
    again = HFEngine.from_policy(engine.model, tiny_tokenizer, max_batch_size=2).generate(
        prompts, cfg
    )
    assert [c.token_ids for c in again] == [
        c.token_ids for c in out
    ]  # same seed, same call → same samples


def test_stop_string_is_kept_and_ends_the_text(engine, tiny_tokenizer):
    out = engine.generate(
        _ids(tiny_tokenizer, ["Hi", "User:"]),
        SamplingConfig(n=4, max_new_tokens=40, stop=["e"], seed=1),
    )
    stopped = [c for c in out if c.finish_reason == "stop"]
    assert stopped, "an untrained model emits an 'e' within 40 tokens"
    by_string = [c for c in stopped if c.token_ids[-1] != tiny_tokenizer.eos_token_id]
    assert by_string
    for c in by_string:  # the text ends right after the first stop string, which is kept
        assert c.text.endswith("e") and c.text.count("e") == 1
    for c in out:
        if c.finish_reason == "length":
            assert len(c.token_ids) == 40 and "e" not in c.text


def test_greedy_min_tokens_and_log_probs_match_trainer(engine, tiny_tokenizer):
    prompt = _ids(tiny_tokenizer, ["User: What is 3 + 4?\nAssistant: <think>"])
    (c,) = engine.generate(
        prompt, SamplingConfig(temperature=0.0, max_new_tokens=10, min_new_tokens=10)
    )
    assert len(c.token_ids) == 10 and c.finish_reason == "length"
    full = torch.tensor([prompt[0] + c.token_ids])
    with torch.no_grad():
        ref = get_response_log_probs(
            engine.model, full[:, :-1], full[:, 1:], return_token_entropy=True
        )
    p = len(prompt[0])
    torch.testing.assert_close(
        torch.tensor(c.log_probs), ref["log_probs"][0, p - 1 :], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        torch.tensor(c.entropy), ref["token_entropy"][0, p - 1 :], rtol=1e-5, atol=1e-5
    )
    # Greedy picks the arg-max: each sampled token's log-prob is the row maximum.
    with torch.no_grad():
        logits = engine.model(full).logits[0, p - 1 : -1]
    assert torch.equal(logits.argmax(-1), torch.tensor(c.token_ids))


def test_load_weights_makes_engine_equal_to_policy(tiny_model, tiny_tokenizer):
    engine = HFEngine.from_policy(tiny_model, tiny_tokenizer)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert not torch.equal(next(engine.model.parameters()), next(tiny_model.parameters()))
    sync_weights(engine, tiny_model, step=7)
    for (name, a), b in zip(engine.model.named_parameters(), tiny_model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert engine.weight_version == 7
    # Wrapper prefixes (DDP "module.", compile "_orig_mod.") are stripped.
    engine.load_weights(
        [("module._orig_mod.model.norm.weight", torch.ones_like(tiny_model.model.norm.weight))],
        version=8,
    )
    assert engine.weight_version == 8
    with pytest.raises(KeyError, match="not in the engine's model"):
        engine.load_weights([("bogus.weight", torch.zeros(1))], version=9)
    assert engine.weight_version == 8  # a failed load does not claim the new step


def test_bad_sampling_configs():
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingConfig(max_new_tokens=4, min_new_tokens=5)
    with pytest.raises(ValueError, match="n must be"):
        SamplingConfig(n=0)


def test_samples_do_not_depend_on_the_batch(tiny_model, tiny_tokenizer):
    """What makes DDP shards and a single process draw the same rollouts."""
    prompts = _ids(tiny_tokenizer, ["User: What is 1 + 2?", "Hi", "Compute 7 + 8", "x"])
    cfg = SamplingConfig(n=2, max_new_tokens=10, seed=11, top_p=0.9)
    together = HFEngine.from_policy(tiny_model, tiny_tokenizer, max_batch_size=4).generate(
        prompts, cfg
    )
    alone = HFEngine.from_policy(tiny_model, tiny_tokenizer, max_batch_size=1).generate(
        prompts[2:3], cfg
    )
    assert [c.token_ids for c in together[4:6]] == [c.token_ids for c in alone]
    other_seed = HFEngine.from_policy(tiny_model, tiny_tokenizer).generate(
        prompts, SamplingConfig(n=2, max_new_tokens=10, seed=12)
    )
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in together]
    assert together[0].token_ids != together[1].token_ids  # the n samples of a prompt differ


def test_max_logprob_gap_sees_whether_the_engine_holds_the_policy(tiny_model, tiny_tokenizer):
    from lit_align.engines import max_logprob_gap

    engine = HFEngine.from_policy(tiny_model, tiny_tokenizer)
    prompts = [[5, 6, 7], [8, 9]]
    out = engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_new_tokens=6, seed=1))
    assert max_logprob_gap(tiny_model, prompts, out) < 1e-5
    with torch.no_grad():
        tiny_model.model.norm.weight.mul_(3.0)  # sharper next-token distributions
    assert max_logprob_gap(tiny_model, prompts, out) > 1e-2


def test_batched_sampling_draws_what_per_row_multinomial_draws():
    """The sampler's exponential race over a (rows, V) buffer is torch.multinomial, draw for draw."""
    from lit_align.engines.hf import _StepSampler

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3  # (rows, V)
    seeds = [11, 12, 13, 14, 15, 16]
    sampler = _StepSampler(seeds, 1.0, 1.0, 0, [], torch.device("cpu"))
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    probs = torch.softmax(logits, -1)
    for _ in range(5):  # several steps: each row's generator advances the same way
        picked = sampler(torch.zeros(6, 1, dtype=torch.long), logits).argmax(-1)
        by_row = torch.cat(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)]
        )
        assert torch.equal(picked, by_row)
    # recorded: the raw log-probs of the picks and the raw entropies
    lp, ent = sampler.stats()
    log_p = torch.log_softmax(logits, -1)
    assert torch.allclose(torch.tensor(lp)[:, -1], log_p.gather(-1, picked[:, None]).squeeze(-1))
    assert torch.allclose(torch.tensor(ent)[:, 0], -(probs * log_p).sum(-1), atol=1e-6)


def test_sampled_log_probs_are_the_raw_models_whatever_temperature_top_p_and_min_tokens(
    engine, tiny_tokenizer
):
    """Read from the decoding logits (no second pass), they still equal a teacher-forced pass."""
    prompts = _ids(tiny_tokenizer, ["User: What is 3 + 4?", "Hi there, compute 12 + 30"])
    cfg = SamplingConfig(
        n=3, temperature=0.7, top_p=0.9, max_new_tokens=8, min_new_tokens=8, seed=2
    )
    for c in engine.generate(prompts, cfg):
        p = prompts[c.prompt_index]
        full = torch.tensor([p + c.token_ids])
        with torch.no_grad():
            ref = get_response_log_probs(engine.model, full[:, :-1], full[:, 1:], True)
        assert len(c.token_ids) == 8
        torch.testing.assert_close(
            torch.tensor(c.log_probs), ref["log_probs"][0, len(p) - 1 :], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            torch.tensor(c.entropy), ref["token_entropy"][0, len(p) - 1 :], rtol=1e-5, atol=1e-5
        )


def test_shared_prefill_samples_what_a_prefill_per_row_samples(tiny_model, tiny_tokenizer):
    prompts = _ids(tiny_tokenizer, ["User: What is 3 + 4?", "Hi", "Compute 7 * 8 please"])
    cfg = SamplingConfig(n=4, temperature=1.0, max_new_tokens=10, seed=9)
    shared = HFEngine.from_policy(tiny_model, tiny_tokenizer, max_batch_size=3)
    plain = HFEngine.from_policy(tiny_model, tiny_tokenizer, max_batch_size=3, share_prefill=False)
    a, b = shared.generate(prompts, cfg), plain.generate(prompts, cfg)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(
            torch.tensor(x.log_probs), torch.tensor(y.log_probs), atol=1e-5, rtol=1e-5
        )


def test_a_sampled_trailing_pad_token_is_kept(engine, tiny_tokenizer):
    """generate pads a row only after it finished, so a row that never finished ran the whole
    budget and every token of it, pad ids included, was sampled (they used to be dropped)."""
    pad = tiny_tokenizer.pad_token_id
    cfg = SamplingConfig(max_new_tokens=3, stop=[])
    tokens, _, reason = engine._cut([7, pad, pad], cfg)
    assert tokens == [7, pad, pad] and reason == "length"
    eos = tiny_tokenizer.eos_token_id
    assert engine._cut([7, eos, pad], cfg)[0] == [7, eos]  # padding after EOS is not part of it
