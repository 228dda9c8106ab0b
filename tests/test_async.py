"""Asynchronous rollouts (max_staleness): staleness 0 is today's synchronous path bit for bit,
rounds made ahead equal synchronous ones when the weights do not change, two runs are bitwise
identical, the bound holds, a killed run resumes bitwise (rounds ahead in the checkpoint), a round
past the bound is made again and counted, the producer's errors surface."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_align.data.producer import AsyncProducer, round_version, rounds_ahead
from lit_align.losses import LossConfig
from lit_align.metrics import ENGINE_MISMATCH, REGENERATED, STALENESS_MAX, STALENESS_MEAN
from lit_align.modules import GRPOModule
from lit_align.rounds import Rollout, Round
from tests.helpers import DistinctCharacters, cpu_trainer, tiny_rollout_data


def _module(lr=1e-2, **loss):
    torch.manual_seed(0)
    return GRPOModule(
        "tiny",
        dtype="float32",
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
        loss=LossConfig(**{"loss_type": "grpo_clip", "cliprange": 0.2, **loss}),
    )


def _trainer(callbacks=(), **kw):
    return cpu_trainer(callbacks, **kw)


class Rounds(L.Callback):
    """Each round as trained: its samples, its untimed metrics, and every train/ metric."""

    def __init__(self):
        self.samples, self.metrics, self.steps = [], [], []

    def on_train_epoch_start(self, trainer, pl_module):
        latest = trainer.datamodule.latest_round
        self.samples.append([(s.completion_ids, s.rollout_log_probs, s.reward, s.version)
                             for s in latest.samples])  # fmt: skip
        self.metrics.append(  # untimed
            {
                k: v
                for k, v in latest.metrics.items()
                if k.startswith(("rollout/", "async/stal", REGENERATED)) and "_per_s" not in k
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        )


def _fit(max_epochs=4, lr=1e-2, callbacks=(), module=None, **data):
    record = Rounds()
    module = module or _module(lr)
    dm = tiny_rollout_data(**data)
    _trainer([record, *callbacks], max_epochs=max_epochs).fit(module, dm)
    return record, module, dm


def _params(module):
    return [p.detach().clone() for p in module.model.parameters()]


# Recorded with the synchronous code before asynchronous rounds existed (commit 2f89bd6): the
# same seed, sizes and loss; the sum of the final parameters (float64) and the last step's loss.
_GOLDEN_PARAM_SUM = float.fromhex("0x1.dbec9926e76a0p+7")
_GOLDEN_LAST_LOSS = float.fromhex("-0x1.3898c80000000p-5")


def test_staleness_0_is_the_synchronous_path_bitwise():
    record = Rounds()
    torch.manual_seed(0)  # as the recording did: seeded after the module was built
    module = GRPOModule(
        "tiny",
        dtype="float32",
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        loss=LossConfig(loss_type="grpo_clip", cliprange=0.2, kl_coef=0.05),
    )
    dm = tiny_rollout_data(
        train_batch_size=8, micro_batch_size=2, epochs_per_rollout_batch=2, max_staleness=0
    )
    trainer = _trainer([record], max_epochs=3, accumulate_grad_batches=4)
    trainer.fit(module, dm)
    assert dm._producer is None  # no producer, no thread: today's code path
    assert sum(p.double().sum() for p in module.model.parameters()).item() == _GOLDEN_PARAM_SUM
    assert record.steps[-1]["train/loss"] == _GOLDEN_LAST_LOSS
    assert not any(k.startswith("async/") for k in dm.latest_round.metrics)


def test_rounds_made_ahead_equal_synchronous_rounds_when_the_weights_do_not_change():
    # lr 0: every version holds the same weights, so a round's contents cannot depend on being
    # made ahead, in another thread, while another round trains.
    sync, _, _ = _fit(lr=0.0)
    ahead, _, _ = _fit(lr=0.0, max_staleness=1)
    assert [[s[:3] for s in r] for r in ahead.samples] == [[s[:3] for s in r] for r in sync.samples]
    assert [r[0][3] for r in ahead.samples] == [0, 0, 1, 2]  # round j sampled by step j - 1
    strip = [{k: v for k, v in m.items() if k.startswith("rollout/")} for m in ahead.metrics]
    assert strip == sync.metrics


def test_staleness_1_is_deterministic_bounded_and_corrected():
    first, module_a, _ = _fit(max_staleness=1)
    second, module_b, _ = _fit(max_staleness=1)
    for a, b in zip(_params(module_a), _params(module_b), strict=True):
        assert torch.equal(a, b)
    untimed = [
        [{k: v for k, v in s.items() if "_per_s" not in k} for s in r.steps]
        for r in (first, second)
    ]
    assert untimed[0] == untimed[1]
    assert [m[STALENESS_MEAN] for m in first.metrics] == [0.0, 1.0, 1.0, 1.0]
    assert all(m[STALENESS_MAX] <= 1 for m in first.metrics)
    # TIS is on by default (cap 2) and logs its weight and the truncated fraction: 1 where the
    # engine sampled with the weights being trained (round 0), off 1 on stale rounds
    assert module_a.loss.tis_cap == 2.0
    assert {"train/tis_weight_mean", "train/tis_capped_frac"} <= set(first.steps[-1])
    weights = [s["train/tis_weight_mean"] for s in first.steps]  # 4 micro-batches per round
    assert all(abs(w - 1.0) < 1e-5 for w in weights[:4])
    assert max(abs(w - 1.0) for w in weights[4:]) > 1e-3
    # one step per round: the proximal policy is the policy being trained (ratio 1, no extra pass)
    assert {s["train/ratio_mean"] for s in first.steps} == {1.0}
    # the engine-vs-trainer gap is measured on fresh samples only: round 0
    fresh = [s for s in first.steps if ENGINE_MISMATCH in s]
    assert fresh and first.steps[0][ENGINE_MISMATCH] < 1e-4
    assert first.steps != _fit()[0].steps  # staleness changes the run (it is not a no-op)


def test_a_lag_of_two_rounds_keeps_the_bound():
    record, _, _ = _fit(max_epochs=5, max_staleness=2)
    assert [m[STALENESS_MEAN] for m in record.metrics] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert [r[0][3] for r in record.samples] == [0, 0, 0, 1, 2]


class Killed(Exception):
    pass


class KillAt(L.Callback):
    """Raises in the middle of a round (the producer is generating the next one)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed


def test_async_killed_and_resumed_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    sizes = dict(train_batch_size=8, micro_batch_size=4, max_staleness=2)  # 2 steps per round
    full, full_module, _ = _fit(**sizes)

    every_round = ModelCheckpoint(
        dirpath=tmp_path, save_last=True, every_n_epochs=1, save_on_train_epoch_end=True
    )
    trainer = _trainer([every_round, KillAt(step=5)], max_epochs=4, enable_checkpointing=True)
    with pytest.raises(Killed):  # killed in round 2's second step; last.ckpt: end of round 1
        trainer.fit(_module(), tiny_rollout_data(**sizes))

    record, resumed = Rounds(), _module()
    dm = tiny_rollout_data(**sizes)
    made = []
    original = dm.make_round
    dm.make_round = lambda engine, j, *a: made.append(j) or original(engine, j, *a)
    _trainer([record], max_epochs=4).fit(resumed, dm, ckpt_path=str(tmp_path / "last.ckpt"))
    assert made == [3]  # round 2 came from the checkpoint, round 3 from the restored weights
    for a, b in zip(_params(full_module), _params(resumed), strict=True):
        assert torch.equal(a, b)
    assert record.samples == full.samples[2:]
    assert record.metrics == full.metrics[2:]
    tail = full.steps[-len(record.steps) :]
    for got, want in zip(record.steps, tail, strict=True):
        keys = set(got) - {"train/tokens_per_s"}
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}


def test_a_round_past_a_lowered_bound_is_made_again_and_counted(tmp_path):
    every_round = ModelCheckpoint(
        dirpath=tmp_path, save_last=True, every_n_epochs=1, save_on_train_epoch_end=True
    )
    trainer = _trainer([every_round, KillAt(step=2)], max_epochs=4, enable_checkpointing=True)
    with pytest.raises(Killed):  # last.ckpt after round 1 holds rounds 2 (step 0), 3 (step 1)
        trainer.fit(_module(), tiny_rollout_data(max_staleness=2))
    record = Rounds()
    _trainer([record], max_epochs=4).fit(
        _module(), tiny_rollout_data(max_staleness=1), ckpt_path=str(tmp_path / "last.ckpt")
    )
    # both saved rounds are 2 steps stale at the new bound of 1: made again from the current
    # weights (staleness 0) and counted; round 4 would be the producer's (none: max_epochs 4)
    assert [m[STALENESS_MEAN] for m in record.metrics] == [0.0, 0.0]
    assert [m[REGENERATED] for m in record.metrics] == [16.0, 16.0]


class FailsOnRound(DistinctCharacters):
    def __init__(self, k):
        super().__init__()
        self.k, self.calls = k, 0

    def score(self, prompts, completions, answers):
        self.calls += 1
        if self.calls == self.k + 1:
            raise RuntimeError("grader exploded")
        return super().score(prompts, completions, answers)


def test_an_error_in_the_producer_stops_the_run_with_it():
    with pytest.raises(RuntimeError, match="grader exploded"):
        _fit(max_staleness=1, evaluator=FailsOnRound(2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(train_batch_size=8, max_staleness=1), r"multiple of the optimizer steps per round"),
        (dict(max_staleness=-1), r"max_staleness \(-1\) must be 0"),
    ],
)
def test_bad_staleness_fails_at_construction_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_rollout_data(**kwargs)


def test_producer_threads_are_refused_on_vllm():
    from lit_align.engines import EngineConfig

    with pytest.raises(ValueError, match=r"producer_threads is for the HF engine"):
        tiny_rollout_data(max_staleness=1, producer_threads=1, engine=EngineConfig(backend="vllm"))


def test_several_ranks_are_refused_with_the_fix():
    dm = tiny_rollout_data(max_staleness=1)
    with pytest.raises(ValueError, match=r"single process; with 2 ranks set max_staleness: 0"):
        dm._check_sizes(world_size=2)


def test_the_schedule_and_the_producer_state_round_trip():
    assert [round_version(j, 1, 2) for j in range(4)] == [0, 0, 2, 4]
    assert rounds_ahead(0, 2, stop=10) == [1, 2] and rounds_ahead(8, 2, stop=10) == [9]

    producer = AsyncProducer()
    sample = Rollout([1, 2], [3], 0.5, 1.0, [-0.25], True, False, None, 7)
    made = Round([sample], [{"answer": object(), "response": "3"}], {"rollout/reward": 1.0})
    producer.submit([4], 7, lambda j: made)
    state = producer.state_dict()  # waits for the job in flight
    restored = AsyncProducer()
    restored.load_state_dict(state)
    (got,) = restored.ready.values()
    assert got.version == 7 and got.round.samples == [sample]
    assert got.round.records[0]["response"] == "3" and got.round.metrics == made.metrics


@pytest.mark.slow
def test_the_async_demo_learns_one_round_ahead(demo_dir, monkeypatch):
    """The README's demo with configs/demo/overlays/async.yaml: the first 15 of its 30 rounds
    (deterministic; CI time), every round after the first sampled one step stale, checked against
    the README's round-15 accuracy (~1 min with the shared warm start)."""
    from tests.helpers import check_demo_accuracy, fit_demo

    monkeypatch.chdir(demo_dir)
    _, scalars = fit_demo(
        "demo_grpo_async",
        "configs/demo/grpo.yaml",
        "configs/demo/overlays/async.yaml",
        "--trainer.max_epochs=15",
    )
    check_demo_accuracy(scalars, "grpo_async_demo_round15_val_accuracy")
    assert scalars[STALENESS_MEAN] == [0.0] + [1.0] * 14
    assert scalars[REGENERATED] == [0.0] * 15
    assert len(scalars["train/tis_weight_mean"]) == 15 and "train/tis_capped_frac" in scalars
    assert len(scalars[ENGINE_MISMATCH]) == 1  # fresh samples: round 0's only
    for tag in ("async/trainer_wait_s", "async/producer_idle_s", "async/samples_per_s"):
        assert tag in scalars, tag


def test_the_producer_thread_has_its_own_torch_threads():
    seen = []
    producer = AsyncProducer(threads=1)
    producer.submit([0], 0, lambda j: seen.append(torch.get_num_threads()) or Round([], [], {}))
    producer.wait()
    assert seen == [1] and producer.take(0) is not None
