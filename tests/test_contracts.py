"""The declared seam (lit_align.contracts): a third-party DataModule trains lit_align's GRPOModule,
and a third-party module trains on lit_align's RolloutDataModule, each written against the
protocol alone (no lit_align base class on the fake side)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_align.contracts import (
    PolicySource,
    RolloutData,
    TaskData,
    latest_round,
    policy_source,
    round_data,
    task_data,
)
from lit_align.data import SFTDataModule
from lit_align.data.buffer import RolloutBuffer, StepBatchSampler
from lit_align.engines import EngineConfig, SamplingConfig, build_engine, sync_weights
from lit_align.models import build_tiny_model, build_tiny_tokenizer
from lit_align.modules import GRPOModule
from lit_align.rounds import EpisodeSettings, Rollout
from tests.helpers import DistinctCharacters, cpu_trainer, tiny_rollout_data


class HandMadeRounds(L.LightningDataModule):
    """Serves the same two hand-made groups every round; owns an HF engine for validation."""

    micro_batch_size = 2
    max_staleness = 0  # synchronous: each round sampled by the weights that train on it
    evaluator = DistinctCharacters()

    def __init__(self) -> None:
        super().__init__()
        self.buffer: RolloutBuffer | None = None
        self._engine = None
        self.synced: list[int] = []

    @property
    def steps_per_round(self) -> int:
        return 2  # 8 samples, 4 per optimizer step

    def synced_engine(self, step: int):
        policy = policy_source(self.trainer)
        if self._engine is None:
            config = EngineConfig(backend="hf")
            self._engine = build_engine(config, policy.model, policy.tokenizer, "tiny")
        sync_weights(self._engine, policy.model, step)
        self.synced.append(step)
        return self._engine

    def task_sampling(self, sampling: SamplingConfig) -> SamplingConfig:
        return sampling

    def episode_settings(self, examples):
        return EpisodeSettings(examples=examples)  # one completion per sample

    def val_dataloader(self):
        return []

    def train_dataloader(self) -> DataLoader:
        # Group advantages written out: rewards (1, 0, 0, 1) → ±1 per group of 4.
        samples = [
            Rollout([5, 6, 7], [8 + i, 9 + i], adv, 0.0, [-1.0, -1.0], True, False)
            for i, adv in enumerate([1.0, -1.0, -1.0, 1.0] * 2)
        ]
        self.buffer = RolloutBuffer(samples)
        sampler = StepBatchSampler(self.buffer, 4, self.micro_batch_size, 1, seed=0)
        sampler.set_normalizers(sampler.step_counts, self.trainer.accumulate_grad_batches)
        return DataLoader(self.buffer, batch_sampler=sampler, collate_fn=self.buffer.collate)


class TinyPolicy(L.LightningModule):
    """A REINFORCE module of its own: −A · mean log p of the response tokens."""

    model_name_or_path = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = build_tiny_tokenizer()
        self.net, _ = build_tiny_model(tokenizer=self.tokenizer)
        self.losses: list[float] = []

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    def training_step(self, batch, batch_idx):
        logits = self.net(batch["input_ids"]).logits.float()  # (B, L, V)
        labels = batch["labels"].clamp(min=0)
        logp = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        mask = batch["response_mask"]
        per_seq = (logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        loss = -(batch["advantages"].view(-1) * per_seq).mean()
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)


def test_a_third_party_datamodule_trains_grpo_through_the_protocol():
    data = HandMadeRounds()
    assert isinstance(data, RolloutData) and isinstance(data, TaskData)
    module = GRPOModule("tiny", dtype="float32", validate_at_start=False)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = cpu_trainer(max_epochs=2, accumulate_grad_batches=2)
    trainer.fit(module, data)
    assert trainer.global_step == 4  # 2 steps per round × 2 rounds
    assert any(
        not torch.equal(a, b) for a, b in zip(before, module.model.parameters(), strict=True)
    )
    # 2 steps per round: the module stored old log-probs in the fake's buffer, through the protocol.
    assert data.buffer is not None and set(data.buffer.extra) == {"old"}
    engine = data.synced_engine(trainer.global_step)  # the sync owner is the DataModule
    assert engine.weight_version == trainer.global_step == data.synced[-1]


def test_a_third_party_module_trains_on_the_rollout_datamodule():
    module = TinyPolicy()
    assert isinstance(module, PolicySource)
    data = tiny_rollout_data(synthetic_size=16, rollout_batch_size=8, train_batch_size=8)
    trainer = cpu_trainer(max_epochs=2)
    trainer.fit(module, data)
    assert trainer.global_step == 2 and len(module.losses) == 4
    assert latest_round(trainer) is data.latest_round is not None
    assert len(data.latest_round.samples) == 8
    # The DataModule built its engine from the module's model and pushed each round's weights.
    assert data.synced_engine(trainer.global_step).weight_version == 2


def test_a_datamodule_without_the_contract_is_named_with_what_it_lacks():
    trainer = cpu_trainer()
    trainer.datamodule = SFTDataModule(train_source="synthetic:addition", template="demo")
    task_data(trainer)  # an SFT DataModule is TaskData…
    with pytest.raises(
        TypeError,
        match=r"micro_batch_size, steps_per_round, buffer \(the round\) and max_staleness",
    ):
        round_data(trainer)  # …but serves no rounds
    trainer.datamodule = object()
    with pytest.raises(TypeError, match=r"the DataModule is object; it must provide evaluator"):
        task_data(trainer)
    assert latest_round(trainer) is None
    with pytest.raises(TypeError, match=r"the LightningModule is missing; .*tokenizer"):
        policy_source(object())
