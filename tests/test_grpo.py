"""GRPO: start-up size checks, engine = policy after every round, on-policy identities,
off-policy step counts, the reference model only when KL is on, loss options wired through."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_align.engines import SamplingConfig, StaleWeightsError
from lit_align.engines.hf import HFEngine
from lit_align.lora import LoRAConfig
from lit_align.losses import LOSS_FIELDS, LossConfig
from lit_align.modules import GRPOModule
from lit_align.quantization import QuantizationConfig
from lit_align.rewards import RewardEvaluator
from lit_align.rounds import ADVANTAGE_FIELDS, AdvantageConfig
from tests.helpers import (
    SHORT_TURNS,
    DistinctCharacters,
    ScriptedEnvironment,
    cpu_trainer,
    tiny_rollout_data,
)


def _dm(**kw):
    advantages = {k: kw.pop(k) for k in list(kw) if k in ADVANTAGE_FIELDS}
    if advantages:
        kw["advantages"] = AdvantageConfig(**advantages)
    return tiny_rollout_data(**kw)


def _trainer(callbacks=(), **kw):
    return cpu_trainer(callbacks, **{"accumulate_grad_batches": 4, **kw})


def _module(**kw):
    loss = {k: kw.pop(k) for k in list(kw) if k in LOSS_FIELDS}
    if loss:
        kw["loss"] = LossConfig(**loss)
    return GRPOModule(
        "tiny", dtype="float32", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kw
    )


class Record(L.Callback):
    """Keeps every logged training metric, step by step."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.engine_equal: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )

    def on_train_epoch_start(self, trainer, pl_module):
        engine = trainer.datamodule.engine
        self.engine_equal.append(
            all(
                torch.equal(a, b)
                for a, b in zip(
                    engine.model.parameters(), pl_module.model.parameters(), strict=True
                )
            )
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rollout_batch_size=18, group_size=4), "divisible by group_size"),
        (dict(rollout_batch_size=16, train_batch_size=12), "divisible by train_batch_size"),
        (dict(train_batch_size=8, micro_batch_size=3), "divisible by micro_batch_size"),
        (dict(group_size=0), "group_size must be >= 1"),
    ],
)
def test_bad_sizes_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _dm(**kwargs)


def test_accumulation_is_derived_from_the_batch_sizes():
    trainer = _trainer(accumulate_grad_batches=1, max_epochs=1)
    trainer.fit(_module(), _dm(train_batch_size=8, micro_batch_size=2))
    assert trainer.accumulate_grad_batches == 4  # 8 / (2 × 1 rank)
    assert trainer.global_step == 2  # 16 samples per round, 8 per optimizer step


def test_rollout_sampling_is_one_config_with_n_and_seed_derived():
    dm = _dm(sampling=SamplingConfig(temperature=0.7, max_new_tokens=8, stop=None))
    assert dm.sampling.n == 4 and dm.sampling.temperature == 0.7
    assert dm.sampling.stop == ["</answer>"]  # the demo template's
    assert _dm(sampling=SamplingConfig(stop=[])).sampling.stop == []  # none, when asked
    for bad in (SamplingConfig(n=3), SamplingConfig(seed=5)):
        with pytest.raises(ValueError, match="set group_size and seed instead"):
            _dm(sampling=bad)


def test_trainer_mismatches_fail_at_startup_with_the_fix():
    with pytest.raises(ValueError, match=r"set trainer\.accumulate_grad_batches: 4"):
        _trainer(accumulate_grad_batches=2).fit(_module(), _dm())
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs: 1"):
        _trainer(reload_dataloaders_every_n_epochs=0).fit(_module(), _dm())
    with pytest.raises(ValueError, match="accepted values: no_baseline"):
        _module(loss_type="ppo")
    with pytest.raises(ValueError, match="accepted values: seq_mean_token_mean"):
        _module(aggregation="sum")


class ForgetfulEngine:
    """Wraps an engine whose load_weights does not record the version it was given."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    @property
    def weight_version(self):
        return 0

    def load_weights(self, named_tensors, version):
        self.engine.load_weights(named_tensors, version)


def test_the_engine_never_generates_from_stale_weights():
    # The DataModule syncs its engine itself before each round; an engine that does not record
    # the weights it received is refused before the round it would generate with stale weights.
    module, dm = _module(), _dm()
    dm._engine = ForgetfulEngine(HFEngine.from_policy(module.model, module.tokenizer))
    with pytest.raises(StaleWeightsError, match=r"step 0 but the policy is at step 1"):
        _trainer(max_epochs=2).fit(module, dm)


def test_weight_sync_needs_no_callback():
    record = Record()
    _trainer([record], max_epochs=2).fit(_module(), _dm())
    assert record.engine_equal == [True, True]


def test_engine_weights_equal_policy_after_every_round_and_on_policy_identities():
    record = Record()
    module, dm = _module(), _dm()
    trainer = _trainer([record], max_epochs=3)
    trainer.fit(module, dm)
    assert trainer.global_step == 3  # one optimizer step per round
    assert record.engine_equal == [True, True, True]
    # On-policy (one step per round): ratio is exactly 1 and nothing is clipped.
    for step in record.steps:
        assert step["train/ratio_min"] == step["train/ratio_max"] == 1.0
        assert step["train/clip_frac"] == 0.0
        assert step["train/engine_logprob_mismatch"] < 1e-5
        # β = 0 and no reference model, yet a KL is logged: to the sampling policy, 0 on-policy.
        assert "train/kl" not in step and abs(step["train/kl_to_rollout"]) < 1e-5
    assert dm.buffer is not None and "old" not in dm.buffer.extra  # no extra pass was needed


def test_off_policy_rounds_take_the_expected_steps_and_use_old_log_probs():
    record = Record()
    dm = _dm(rollout_batch_size=32, train_batch_size=8, epochs_per_rollout_batch=2)
    trainer = _trainer([record], max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(_module(loss_type="grpo_clip", cliprange=0.2), dm)
    assert dm.steps_per_round == 32 // 8 * 2
    assert trainer.global_step == 2 * dm.steps_per_round
    assert "old" in dm.buffer.extra
    # The first micro-batches of a round run before any update: ratio 1. Later ones moved.
    per_round = len(record.steps) // 2
    assert record.steps[0]["train/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert max(s["train/ratio_max"] for s in record.steps[2:per_round]) > 1.0 + 1e-4
    # The KL to the round's sampling policy grows as the round's steps move the policy.
    assert record.steps[0]["train/kl_to_rollout"] == pytest.approx(0.0, abs=1e-6)
    assert max(s["train/kl_to_rollout"] for s in record.steps[2:per_round]) > 1e-7


def test_reference_model_only_with_kl():
    assert _module(kl_coef=0.0).ref_policy is None
    module = _module(kl_coef=0.1)
    assert module.ref_policy is not None and not any(
        p.requires_grad for p in module.ref_policy.parameters()
    )
    record = Record()
    trainer = _trainer([record], max_epochs=2)
    dm = _dm()
    trainer.fit(module, dm)
    assert "ref" in dm.buffer.extra
    assert record.steps[0]["train/kl"] == pytest.approx(
        0.0, abs=1e-6
    )  # policy = reference at first
    assert record.steps[-1]["train/kl"] > 0.0


@pytest.mark.parametrize(
    "options",
    [
        dict(loss_type="gspo", cliprange=0.2),
        dict(loss_type="grpo_no_clip"),
        dict(loss_type="reinforce_with_baseline", aggregation="token_mean"),
        dict(
            loss_type="no_baseline", aggregation="seq_mean_token_sum_norm", normalize_constant=8.0
        ),
        dict(loss_type="grpo_clip", cliprange_high=0.28, tis_cap=2.0),
    ],
)
def test_loss_options_train(options):
    record = Record()
    module = _module(**options)
    start = [p.detach().clone() for p in module.model.parameters()]
    _trainer([record], max_epochs=1).fit(module, _dm(baseline="leave_one_out", mask_truncated=True))
    moved = max(
        (p - s).abs().max().item() for p, s in zip(module.model.parameters(), start, strict=True)
    )
    assert all(torch.isfinite(torch.tensor(list(s.values()))).all() for s in record.steps)
    assert moved > 1e-4  # the varying reward gives every loss type a gradient


def test_round_prompts_are_seeded_sharded_and_cover_the_data():
    dm = _dm(rollout_batch_size=32, group_size=4, synthetic_size=10)
    dm._prompts = [object() for _ in range(10)]  # 8 prompts per round over 10 prompts
    r0 = dm.round_prompts(0)
    assert len(r0) == 8 and len(set(map(id, r0))) == 8
    assert (
        dm.round_prompts(0, rank=0, world_size=2) + dm.round_prompts(0, rank=1, world_size=2) == r0
    )
    first_two_rounds = dm.round_prompts(0) + dm.round_prompts(1)
    assert len({id(p) for p in first_two_rounds[:10]}) == 10  # a full pass before any repeat


class ShiftEngineLogProbs(L.Callback):
    """Makes the round's engine log-probs disagree with the policy by ``shift`` nats per token."""

    def __init__(self, shift):
        self.shift = shift

    def on_train_epoch_start(self, trainer, pl_module):
        for sample in trainer.datamodule.buffer.samples:
            sample.rollout_log_probs = [lp - self.shift for lp in sample.rollout_log_probs]


def test_engine_trainer_mismatch_above_the_threshold_warns(recwarn):
    record = Record()
    _trainer([record, ShiftEngineLogProbs(0.2)], max_epochs=1).fit(_module(), _dm())
    assert abs(record.steps[0]["train/engine_logprob_mismatch"] - 0.2) < 1e-4
    messages = [str(w.message) for w in recwarn.list]
    assert any(
        "log-prob mismatch 0.2" in m and "mismatch_warn_threshold 0.05" in m for m in messages
    )
    recwarn.clear()
    _trainer([ShiftEngineLogProbs(0.01)], max_epochs=1).fit(_module(), _dm())
    assert not any("log-prob mismatch" in str(w.message) for w in recwarn.list)


def test_sample_logger_writes_text_only_and_round_statistics_stay_whole(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from lit_align.callbacks import GenerationSamples
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    trainer = _trainer(
        [GenerationSamples(num_samples=2)], max_epochs=2, logger=logger, log_every_n_steps=1
    )
    dm = _dm()
    trainer.fit(_module(), dm)
    acc = EventAccumulator(str(tmp_path / "run" / "version_0"))
    acc.Reload()
    lengths = [e.value for e in acc.Scalars("rollout/response_length_mean")]
    assert len(lengths) == 2  # one per round: the sample logger adds no scalar of its own
    assert lengths[-1] == pytest.approx(dm.latest_round.metrics["rollout/response_length_mean"])
    assert "rollout/sample_1/text_summary" in acc.Tags()["tensors"]
    assert "train/kl_to_rollout" in acc.Tags()["scalars"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"lora": LoRAConfig(rank=4, alpha=8.0), "kl_coef": 0.05},
        {"lora": LoRAConfig(rank=4), "quantization": QuantizationConfig(), "kl_coef": 0.05},
        {"environment": ScriptedEnvironment(), "kl_coef": 0.05},
    ],
    ids=["full", "lora_with_kl", "qlora_with_kl", "multi_turn_with_kl"],
)
def test_grpo_killed_and_resumed_is_bitwise_identical_to_an_uninterrupted_run(tmp_path, extra):
    from lightning.pytorch.callbacks import ModelCheckpoint

    extra = dict(extra)
    episodes = {}
    if "environment" in extra:  # multi-turn: short turns, answered twice by the environment
        episodes = {
            "environment": extra.pop("environment"),
            "sampling": SamplingConfig(max_new_tokens=8, min_new_tokens=1, stop=SHORT_TURNS),
        }

    def data():
        return _dm(train_batch_size=8, micro_batch_size=2, epochs_per_rollout_batch=2, **episodes)

    def module():
        torch.manual_seed(0)  # the same initial adapters in every run
        return _module(loss_type="grpo_clip", cliprange=0.2, **extra)

    full_record, full = Record(), module()
    full_dm = data()
    _trainer([full_record], max_epochs=4).fit(full, full_dm)

    # A checkpoint after every round (whether or not it validates), then the run is "killed".
    every_round = ModelCheckpoint(
        dirpath=tmp_path, save_last=True, every_n_epochs=1, save_on_train_epoch_end=True
    )
    first = _trainer([every_round], max_epochs=2, enable_checkpointing=True)
    first.fit(module(), data())
    assert (tmp_path / "last.ckpt").exists()

    record, resumed = Record(), module()
    resumed_dm = data()
    generated = []
    original = resumed_dm.generate_round
    resumed_dm.generate_round = lambda *a: generated.append(a[1]) or original(*a)
    trainer = _trainer([record], max_epochs=4)
    trainer.fit(resumed, resumed_dm, ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 4 * resumed_dm.steps_per_round
    assert generated == [2, 3]  # rounds 3 and 4, each generated once
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    tail = full_record.steps[-len(record.steps) :]
    assert len(record.steps) == len(full_record.steps) // 2
    # Every training metric logged after the restart equals the uninterrupted run's, bit for bit
    # (tokens/s is wall time; the record holds the last value of each tag, so the first resumed
    # step has no grad norm yet: it comes after the step).
    for got, want in zip(record.steps, tail, strict=True):
        keys = set(got) - {"train/tokens_per_s"}
        assert len(keys) >= 10 and {k: got[k] for k in keys} == {k: want[k] for k in keys}

    def untimed(metrics):
        return {k: v for k, v in metrics.items() if not k.startswith("time/") and "_per_s" not in k}

    assert untimed(resumed_dm.latest_round.metrics) == untimed(full_dm.latest_round.metrics)
    if episodes:  # the episodes really had several turns and environment tokens
        assert full_dm.latest_round.metrics["rollout/turns_per_episode"] > 1.5
        assert any(s.sampled is not None for s in full_dm.latest_round.samples)


class Constant(RewardEvaluator):
    """Every completion scores 0.7: no group ever has a learning signal."""

    component_names = ("constant",)
    total_weights = (1.0,)

    def score(self, prompts, completions, answers):
        return torch.full((len(completions), 1), 0.7)


def test_rounds_without_learning_signal_warn_then_optionally_stop():
    with pytest.warns(UserWarning, match="no learning signal: in 3 rounds in a row"):
        _trainer(max_epochs=4).fit(_module(), _dm(evaluator=Constant()))
    trainer = _trainer(max_epochs=10)
    with pytest.warns(UserWarning, match="no learning signal"):
        trainer.fit(_module(), _dm(evaluator=Constant(), stop_on_zero_signal=True))
    assert trainer.current_epoch == 3  # stopped after the third flat round


def test_a_mid_round_checkpoint_is_refused_with_the_fix(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def data():
        return _dm(train_batch_size=8, micro_batch_size=2)  # 2 optimizer steps per round

    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    _trainer([every_step], max_epochs=1, enable_checkpointing=True).fit(_module(), data())
    (mid,) = tmp_path.glob("*step=1.ckpt")
    with pytest.raises(RuntimeError, match=r"middle of a round.*save_on_train_epoch_end"):
        _trainer(max_epochs=2).fit(_module(), data(), ckpt_path=str(mid))


class TermOnRound(DistinctCharacters):
    """Grades like DistinctCharacters; sends SIGTERM to this process while grading round k."""

    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def score(self, prompts, completions, answers):
        import os
        import signal

        if self.calls == self.k:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only sets a flag
        self.calls += 1
        return super().score(prompts, completions, answers)


def test_sigterm_in_a_round_saves_a_resumable_checkpoint_and_stops(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    full = _module()
    _trainer(max_epochs=3).fit(full, _dm())

    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=10)
    trainer = _trainer([checkpoints], max_epochs=3, enable_checkpointing=True)
    with (
        pytest.warns(UserWarning, match=r"SIGTERM: stopped before round 2.*--ckpt_path last"),
        pytest.raises(SIGTERMException),
    ):
        trainer.fit(_module(), _dm(evaluator=TermOnRound(2)))
    assert trainer.global_step == 2  # round 2 never trained

    resumed = _module()
    trainer = _trainer(max_epochs=3)
    trainer.fit(resumed, _dm(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 3
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_hf_engine_stops_generating_when_interrupted():
    import time

    from lit_align.engines import GenerationInterrupted

    module = _module()
    engine = HFEngine.from_policy(module.model, module.tokenizer)
    sampling = SamplingConfig(n=4, max_new_tokens=400, min_new_tokens=400)
    steps = []
    engine.interrupt = lambda: steps.append(1) or len(steps) > 3
    start = time.perf_counter()
    with pytest.raises(GenerationInterrupted):
        engine.generate([[1, 2, 3]] * 8, sampling)
    assert len(steps) <= 6 and time.perf_counter() - start < 5  # a few steps, not 400
