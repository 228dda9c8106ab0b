"""RolloutDataModule: one training epoch is one rollout round.

Each round (``train_dataloader``, reloaded every epoch): take this round's prompts (seeded by
round, sharded by rank) → :func:`lit_align.rounds.run_round` (generate with n = group_size, grade,
group advantages, filters) → a :class:`RolloutBuffer` served as micro-batches, repeated
``epochs_per_rollout_batch`` times. Sizes are checked at start-up.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from lit_align.data.base import TaskDataModule, check_counts, seeded_stream
from lit_align.data.buffer import RolloutBuffer, StepBatchSampler
from lit_align.data.sources import Example
from lit_align.engines.base import GenerationInterrupted, RolloutEngine, SamplingConfig
from lit_align.metrics import ZERO_VARIANCE_GROUP_FRAC
from lit_align.rounds import ADVANTAGE_FIELDS, AdvantageConfig, Round, run_round

log = logging.getLogger(__name__)

__all__ = ["RolloutBuffer", "RolloutDataModule"]


class RolloutDataModule(TaskDataModule):
    """Rollouts generated each epoch by the engine, scored, turned into group advantages.

    All batch sizes count samples (completions) across all ranks.

    Args:
        train_source: prompts with answers: JSONL path, ``hf:NAME`` or ``synthetic:TASK``.
        limit: seeded subset of the training prompts (None: all).
        group_size: samples per prompt (G).
        rollout_batch_size: samples per round; rollout_batch_size / G prompts per round.
        train_batch_size: samples per optimizer step; rollout_batch_size / train_batch_size
            optimizer steps per pass over the round.
        micro_batch_size: samples per forward/backward, per rank. The trainer's
            ``accumulate_grad_batches`` is derived: train_batch_size / (micro_batch_size × ranks).
        epochs_per_rollout_batch: passes over each round's rollouts (> 1 is off-policy).
        sampling: how rollouts are sampled (temperature, top_p, max_new_tokens, min_new_tokens,
            stop; stop None: the template's, e.g. ``</answer>``). ``n`` is group_size and the
            seed is derived from ``seed`` and the round, so neither is set here.
        advantages: group advantages and the round's filters, one block
            (:class:`~lit_align.rounds.AdvantageConfig`: ``normalize_by_std``, ``eps``,
            ``baseline``, ``drop_zero_variance_groups``, ``mask_truncated``). Default: GRPO's
            (mean baseline, divided by the group std).
        synthetic_size: prompts of a synthetic task.
        zero_signal_rounds: warn when this many rounds in a row have (nearly) every group's
            rewards equal (``rollout/zero_variance_group_frac`` ≥ 0.99): every advantage and so
            every gradient is zero. None: never.
        stop_on_zero_signal: also stop training then (the last checkpoint stays resumable).
        **kwargs: validation, template, evaluator, engine… (see
            :class:`~lit_align.data.base.TaskDataModule`).
    """

    def __init__(
        self,
        train_source: str,
        limit: int | None = None,
        group_size: int = 8,
        rollout_batch_size: int = 256,
        train_batch_size: int = 256,
        micro_batch_size: int = 2,
        epochs_per_rollout_batch: int = 1,
        sampling: SamplingConfig | None = None,
        advantages: AdvantageConfig = AdvantageConfig(),
        synthetic_size: int = 1024,
        zero_signal_rounds: int | None = 3,
        stop_on_zero_signal: bool = False,
        **kwargs: Any,
    ) -> None:
        moved = [k for k in kwargs if k in ADVANTAGE_FIELDS | {"advantage_eps"}]
        if moved:  # a clear error, not a silent alias: the block is the one place
            name = "eps" if moved[0] == "advantage_eps" else moved[0]
            raise TypeError(
                f"RolloutDataModule: {', '.join(moved)} moved into the advantages block: "
                f"advantages=AdvantageConfig({name}=…) in Python, data.init_args.advantages.{name} "
                "in a config"
            )
        super().__init__(**kwargs)
        self.train_source = train_source
        self.limit = limit
        self.group_size = group_size
        self.rollout_batch_size = rollout_batch_size
        self.train_batch_size = train_batch_size
        self.micro_batch_size = micro_batch_size
        self.epochs_per_rollout_batch = epochs_per_rollout_batch
        self.advantages = advantages
        self.synthetic_size = synthetic_size
        self.zero_signal_rounds = zero_signal_rounds
        self.stop_on_zero_signal = stop_on_zero_signal
        self.evaluator.set_group_size(group_size)  # (the default one needs the sources above)
        self._flat_rounds = 0  # consecutive rounds without a learning signal
        self._round_key: tuple[int, int] | None = None  # (round, step) of self.buffer
        self._prompts: list[Example] | None = None
        self.buffer: RolloutBuffer | None = None
        self.latest_round: Round | None = (
            None  # the latest round (callbacks read its records, metrics)
        )
        self._check_sizes(world_size=1)
        self.sampling = self.group_sampling(sampling, group_size, "round")

    # ------------------------------------------------------------------ sizes

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps per round."""
        return self.rollout_batch_size // self.train_batch_size * self.epochs_per_rollout_batch

    def _check_sizes(self, world_size: int) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"RolloutDataModule: {message}")

        check_counts(
            "RolloutDataModule",
            group_size=self.group_size,
            rollout_batch_size=self.rollout_batch_size,
            train_batch_size=self.train_batch_size,
            micro_batch_size=self.micro_batch_size,
            epochs_per_rollout_batch=self.epochs_per_rollout_batch,
        )
        G, R, T, M, W = (
            self.group_size,
            self.rollout_batch_size,
            self.train_batch_size,
            self.micro_batch_size,
            world_size,
        )
        if R % (G * W):
            fail(
                f"rollout_batch_size ({R}) must be divisible by group_size × ranks ({G} × {W}): each rank keeps whole groups; "
                f"e.g. rollout_batch_size: {G * W * max(1, R // (G * W))}"
            )
        if R % T:
            fail(f"rollout_batch_size ({R}) must be divisible by train_batch_size ({T})")
        if T % (M * W):
            fail(
                f"train_batch_size ({T}) must be divisible by micro_batch_size × ranks ({M} × {W})"
            )

    def check_trainer(self, trainer: Any) -> None:
        self._check_sizes(trainer.world_size)
        self.derive_accumulation(
            trainer, self.train_batch_size, self.micro_batch_size, "train_batch_size"
        )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "RolloutDataModule: one epoch is one rollout round, so set "
                "trainer.reload_dataloaders_every_n_epochs: 1 "
                f"(it is {trainer.reload_dataloaders_every_n_epochs})"
            )
        self.check_sharding(trainer)

    def data_sources(self) -> list[tuple[str, str, int | None, int, int]]:
        train = (self.train_source, self.split, self.limit, self.seed, self.synthetic_size)
        return [*super().data_sources(), train]

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if stage == "fit" and trainer is not None:
            self.check_trainer(trainer)
        if stage == "fit" and self._prompts is None:
            self._prompts = self.load(*self.data_sources()[-1])
            if not self._prompts:
                raise ValueError(f"no training prompts in {self.train_source!r}")
        if stage in ("fit", "validate"):
            self.setup_validation()

    # ------------------------------------------------------------------ one round

    def round_prompts(self, round_index: int, rank: int = 0, world_size: int = 1) -> list[Example]:
        """This rank's prompts of a round: a seeded stream of shuffled passes over the prompts."""
        assert self._prompts is not None
        per_round = self.rollout_batch_size // self.group_size
        chosen = seeded_stream(self._prompts, per_round, round_index, self.seed * 104_729)
        per_rank = per_round // world_size
        return chosen[rank * per_rank : (rank + 1) * per_rank]

    def generate_round(
        self, engine: RolloutEngine, round_index: int, rank: int = 0, world_size: int = 1
    ) -> RolloutBuffer:
        """Generate with ``engine``, grade and buffer one round (:func:`lit_align.rounds.run_round`)."""
        examples = self.round_prompts(round_index, rank, world_size)
        prompts = [self.prompt_text(e) for e in examples]
        sampling = self.with_environment_stops(
            replace(self.sampling, seed=self.seed * 1_000_003 + round_index)
        )
        self.latest_round = run_round(
            engine,
            self.evaluator,
            prompts,
            [self.prompt_ids(p) for p in prompts],
            [e.answer for e in examples],
            sampling,
            self.advantages,
            self.episode_settings(examples),
        )
        return RolloutBuffer(self.latest_round.samples)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Lightning's epoch for samplers: right even while it restores an end-of-epoch
        # checkpoint, where current_epoch still names the finished epoch.
        round_index = trainer.fit_loop.epoch_progress.current.processed
        if (round_index, trainer.global_step) != self._round_key:  # a reload may ask twice
            self._new_round(trainer, round_index)
        W = trainer.world_size
        sampler = StepBatchSampler(
            self.buffer,
            self.train_batch_size // W,
            self.micro_batch_size,
            self.epochs_per_rollout_batch,
            self.seed * 31 + round_index,
        )
        counts = sampler.step_counts
        if W > 1:  # kept sequences/tokens per step over all ranks (filters keep different amounts)
            counts = trainer.strategy.reduce(
                counts.to(trainer.strategy.root_device), reduce_op="sum"
            ).cpu()
        sampler.set_normalizers(counts, trainer.accumulate_grad_batches * W)
        return DataLoader(
            self.buffer, batch_sampler=sampler, collate_fn=self.buffer.collate, num_workers=0
        )

    def _new_round(self, trainer: Any, round_index: int) -> None:
        start = round_index * self.steps_per_round
        if trainer.global_step != start:
            raise RuntimeError(
                f"RolloutDataModule: round {round_index} starts at optimizer step {start}, but "
                f"the trainer is at step {trainer.global_step}: a checkpoint saved in the middle "
                "of a round cannot be resumed exactly (the round's samples came from weights that "
                "no longer exist). Resume from a round's end: ModelCheckpoint(every_n_epochs: N, "
                "save_on_train_epoch_end: true), not every_n_train_steps."
            )
        engine = self.synced_engine(trainer.global_step)
        if hasattr(engine, "interrupt"):  # SIGTERM stops a long generation between steps
            engine.interrupt = lambda: trainer.received_sigterm
        try:
            self.buffer = self.generate_round(
                engine, round_index, trainer.global_rank, trainer.world_size
            )
        except GenerationInterrupted:
            self._preempt(trainer, round_index)
        if trainer.received_sigterm:
            self._preempt(trainer, round_index)
        self._round_key = (round_index, trainer.global_step)
        if (
            trainer.logger is not None and self.latest_round is not None
        ):  # whatever module trains on it
            trainer.logger.log_metrics(self.latest_round.metrics, step=trainer.global_step)
        self._watch_signal(trainer)

    def _preempt(self, trainer: Any, round_index: int) -> None:
        """SIGTERM (a scheduler's preemption): the policy is still exactly as at the end of the
        previous round, so save that state as ``last.ckpt`` and stop."""
        callback = trainer.checkpoint_callback
        folder = (
            getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        )
        path = Path(folder) / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_warn(
            f"SIGTERM: stopped before round {round_index} (optimizer step {trainer.global_step}) "
            f"and saved {path}; continue with --ckpt_path last (or --ckpt_path {path})"
        )
        raise SIGTERMException

    # ------------------------------------------------------------------ no learning signal

    def _watch_signal(self, trainer: Any) -> None:
        flat = self.latest_round is not None and (
            self.latest_round.metrics[ZERO_VARIANCE_GROUP_FRAC] >= 0.99
        )
        self._flat_rounds = self._flat_rounds + 1 if flat else 0
        if self.zero_signal_rounds is None or self._flat_rounds != self.zero_signal_rounds:
            return
        message = (
            f"no learning signal: in {self._flat_rounds} rounds in a row (nearly) every group of "
            f"{self.group_size} samples scored the same reward (rollout/zero_variance_group_frac "
            "≥ 0.99), so every advantage and gradient is zero. Usual fixes: start from an SFT "
            "warm start that already writes the answer format, give partial credit for the "
            "format (reward shaping), raise group_size or sampling.temperature. With an LLM judge: "
            "it scores a group's responses alike; measure it with lit_align judge-check, and try "
            "structured replies, judge samples > 1 at a temperature, or a stronger judge."
        )
        rank_zero_warn(message)
        if self.stop_on_zero_signal:
            log.error("stopping (stop_on_zero_signal): %s", message)
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"flat_rounds": self._flat_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._flat_rounds = int(state.get("flat_rounds", 0))
