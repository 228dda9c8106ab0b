"""Expert iteration: kept sets hold only correct responses, a step without any correct sample
neither crashes nor trains on nothing, runs resume exactly, and the CPU demo learns."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_align.data import ExpertIterationDataModule
from lit_align.engines import SamplingConfig
from lit_align.modules import SFTModule
from lit_align.rewards import RewardEvaluator
from tests.helpers import check_demo_accuracy, cpu_trainer, fit_demo

ROOT = Path(__file__).resolve().parents[1]


class Switch(RewardEvaluator):
    """Correct when the completion has an even number of characters, or never (``off``)."""

    component_names = ("answer_reward",)
    total_weights = (1.0,)
    correct_component = "answer_reward"
    format_component = "answer_reward"

    def __init__(self) -> None:
        self.off_from_call = 10**9  # calls before this one grade by parity, later ones all wrong
        self.calls = 0

    def score(self, prompts, completions, answers):
        self.calls += 1
        on = self.calls < self.off_from_call
        return torch.tensor([[float(on and len(c) % 2 == 0)] for c in completions])


def _data(evaluator: RewardEvaluator, **kw) -> ExpertIterationDataModule:
    defaults = dict(
        template="demo",
        synthetic_size=64,
        questions_per_step=8,
        group_size=4,
        micro_batch_size=4,
        evaluator=evaluator,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
    )
    return ExpertIterationDataModule("synthetic:addition", **{**defaults, **kw})


def _fit(data, tmp_path, max_epochs=3, ckpt_path=None, callbacks=()):
    L.seed_everything(0)
    module = SFTModule("tiny", dtype="float32", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    trainer = cpu_trainer(callbacks, max_epochs=max_epochs, default_root_dir=tmp_path)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


def test_kept_set_holds_only_correct_responses_once_each():
    data = _data(Switch())
    records = [
        {"prompt": "p", "response": "a", "correct": True, "formatted": True},
        {"prompt": "p", "response": "a", "correct": True, "formatted": True},  # duplicate
        {"prompt": "p", "response": "b", "correct": False, "formatted": True},
        {"prompt": "q", "response": "a", "correct": True, "formatted": False},
    ]
    assert data.keep(records) == [("p", "a"), ("q", "a")]
    data.keep_formatted_only = True
    assert data.keep(records) == [("p", "a")]
    data.keep_formatted_only, data.dedupe = False, False
    assert data.keep(records) == [("p", "a"), ("p", "a"), ("q", "a")]


def test_training_pairs_are_the_correct_samples_of_the_step(tmp_path):
    evaluator = Switch()
    data = _data(evaluator)
    trainer, _ = _fit(data, tmp_path, max_epochs=1)
    prompts, responses, *_ = data._train
    kept = data.keep(data.latest_round.records)
    assert kept and len(prompts) == len(kept)
    end = "<|endoftext|>"  # the demo template ends responses with EOS
    for (p, r), prompt, response in zip(kept, prompts, responses, strict=True):
        assert prompt == p and response == r + end and len(r) % 2 == 0
    assert trainer.global_step > 0


def test_a_step_without_correct_samples_trains_again_on_the_last_kept_set(tmp_path):
    evaluator = Switch()
    evaluator.off_from_call = 2  # step 0 grades by parity, every later step finds nothing
    data = _data(evaluator)
    with pytest.warns(UserWarning, match="no sample was correct"):
        trainer, _ = _fit(data, tmp_path, max_epochs=3)
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * len(data.train_dataloader())


def test_a_first_step_without_any_correct_sample_says_what_to_do(tmp_path):
    evaluator = Switch()
    evaluator.off_from_call = 1  # nothing is ever correct
    with pytest.raises(ValueError, match="nothing to imitate"):
        _fit(_data(evaluator), tmp_path, max_epochs=1)


def test_resumed_run_is_bitwise_identical(tmp_path):
    full, full_module = _fit(_data(Switch(), epochs_per_step=2), tmp_path / "a", max_epochs=4)
    ckpt = tmp_path / "mid.ckpt"

    class Save(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 2:  # mid-step: the kept set must come from the checkpoint
                trainer.save_checkpoint(ckpt)
                trainer.should_stop = True

    _fit(_data(Switch(), epochs_per_step=2), tmp_path / "b", max_epochs=4, callbacks=[Save()])
    resumed, module = _fit(
        _data(Switch(), epochs_per_step=2), tmp_path / "c", max_epochs=4, ckpt_path=ckpt
    )
    assert resumed.global_step == full.global_step
    for (name, a), (_, b) in zip(
        full_module.model.state_dict().items(), module.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_demo_expert_iteration_raises_validation_accuracy(demo_dir, monkeypatch):
    """The README's EI demo: the GRPO demo's warm start (shared by the demo tests), then 10 steps."""
    monkeypatch.chdir(demo_dir)
    _, scalars = fit_demo("demo_expert_iteration", "configs/demo/expert_iteration.yaml")
    check_demo_accuracy(scalars, "ei_demo_final_val_accuracy")
    assert all(k > 0 for k in scalars["ei/kept"])
    assert "rollout/token_entropy_mean" in scalars and "ei/questions_solved_frac" in scalars
