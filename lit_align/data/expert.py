"""ExpertIterationDataModule: sample, keep what is correct, fine-tune on it (expert iteration).

One expert-iteration step (Anthony et al. 2017; the STaR/ReST family of filtered behaviour
cloning) spans ``epochs_per_step`` training epochs: at its first epoch the DataModule takes the
step's ``questions_per_step`` questions (a seeded stream of shuffled passes over the training
set), generates ``group_size`` responses to each with the policy's current weights
(:meth:`~lit_align.data.base.TaskDataModule.synced_engine`), grades them
(:func:`lit_align.rounds.run_round`) and keeps the correct ones; every epoch of the step is then
an SFT epoch over that kept set (the SFT collation, windows and resume of
:class:`~lit_align.data.sft.SFTDataModule`). Train with :class:`lit_align.modules.SFTModule`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lit_align.data.base import check_counts, seeded_stream
from lit_align.data.sft import SFTDataModule
from lit_align.data.sources import Example
from lit_align.data.templates import end_of_response
from lit_align.engines.base import SamplingConfig
from lit_align.metrics import EI_KEPT, EI_KEPT_FRACTION, EI_SOLVED_FRAC, EI_UNSOLVED
from lit_align.rounds import Round, run_round

__all__ = ["ExpertIterationDataModule"]

log = logging.getLogger(__name__)

# A first step whose samples are all wrong tries the next questions, at most this many times.
_FIRST_STEP_TRIES = 4


class ExpertIterationDataModule(SFTDataModule):
    """Expert iteration: each step generates, keeps correct responses, and trains on them.

    Args:
        train_source: questions with answers (JSONL, ``hf:``, ``synthetic:``), as for GRPO.
        questions_per_step: questions sampled per step (D_b in the CS336 experiment: 512–2048).
        group_size: responses generated per question (G).
        epochs_per_step: SFT epochs over each step's kept set.
        sampling: generation settings; ``n`` and ``seed`` are derived (n = group_size, the
            sampling seed from ``seed`` and the step), ``stop: null`` means the template's stop strings (the
            closing ``</answer>`` for r1_zero).
        keep_formatted_only: keep a correct response only when it is also well formatted.
        dedupe: keep one copy of identical responses to the same question.
        **kwargs: micro_batch_size, batch_size, end_with_eos, max_length, limit, validation,
            template, evaluator, engine… (see :class:`~lit_align.data.sft.SFTDataModule`).
    """

    def __init__(
        self,
        train_source: str,
        questions_per_step: int = 512,
        group_size: int = 4,
        epochs_per_step: int = 1,
        sampling: SamplingConfig | None = None,
        keep_formatted_only: bool = False,
        dedupe: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_source, **kwargs)
        if self.environment is not None:  # its SFT pairs would lose the tool turns
            raise ValueError(
                "ExpertIterationDataModule keeps single-turn (prompt, response) pairs for SFT; "
                "multi-turn episodes (data.init_args.environment) train with GRPO "
                "(RolloutDataModule) for now: drop environment here"
            )
        check_counts(
            "ExpertIterationDataModule",
            questions_per_step=questions_per_step,
            group_size=group_size,
            epochs_per_step=epochs_per_step,
        )
        self.questions_per_step = questions_per_step
        self.group_size = group_size
        self.evaluator.set_group_size(group_size)
        self.epochs_per_step = epochs_per_step
        self.keep_formatted_only = keep_formatted_only
        self.dedupe = dedupe
        self.sampling = self.group_sampling(sampling, group_size, "step")
        self._questions: list[Example] | None = None
        self._step_key: int | None = None  # the EI step whose kept set self._train holds
        self.latest_round: Round | None = None  # the latest step's samples (callbacks read it)

    def check_trainer(self, trainer: Any) -> None:
        super().check_trainer(trainer)
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "ExpertIterationDataModule: each step regenerates its training set, so set "
                "trainer.reload_dataloaders_every_n_epochs: 1 "
                f"(it is {trainer.reload_dataloaders_every_n_epochs})"
            )

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None:
            self.check_trainer(self.trainer)
        if stage == "fit" and self._questions is None:
            self._questions = self.load(*self.data_sources()[-1])
        if stage in ("fit", "validate"):
            self.setup_validation()

    # ------------------------------------------------------------------ one step

    def step_questions(self, step: int, rank: int = 0, world_size: int = 1) -> list[Example]:
        """This rank's questions of an EI step: a seeded stream of shuffled passes."""
        assert self._questions is not None
        per_step = self.questions_per_step
        chosen = seeded_stream(self._questions, per_step, step, self.seed * 7_919)
        share = per_step // world_size
        return chosen[rank * share : (rank + 1) * share]

    def generate_step(self, engine: Any, step: int, rank: int = 0, world_size: int = 1) -> Round:
        """Generate and grade one step's samples with ``engine`` (no filtering yet)."""
        questions = self.step_questions(step, rank, world_size)
        prompts = [self.prompt_text(e) for e in questions]
        return run_round(
            engine,
            self.evaluator,
            prompts,
            [self.prompt_ids(p) for p in prompts],
            [e.answer for e in questions],
            replace(self.sampling, seed=self.seed * 1_000_003 + step),
        )

    def keep(self, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(prompt, response) of the records worth imitating: correct (and formatted, when
        asked), one copy of identical responses to the same question when ``dedupe``."""
        kept, seen = [], set()
        for r in records:
            if not r["correct"] or (self.keep_formatted_only and not r["formatted"]):
                continue
            key = (r["prompt"], r["response"])
            if self.dedupe and key in seen:
                continue
            seen.add(key)
            kept.append(key)
        return kept

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        step = self._next_epoch() // self.epochs_per_step
        if step != self._step_key:
            self._new_step(trainer, step)
        return super().train_dataloader()

    def _new_step(self, trainer: Any, step: int) -> None:
        engine = self.synced_engine(trainer.global_step)
        for attempt in range(_FIRST_STEP_TRIES if self._train is None else 1):
            # Later attempts (first step only) take the questions of steps not yet reached.
            index = step + attempt * 1_000_000
            self.latest_round = self.generate_step(
                engine, index, trainer.global_rank, trainer.world_size
            )
            kept = self.keep(self.latest_round.records)
            pairs = self._pairs(kept)
            metrics = {
                **self.latest_round.metrics,
                **self._step_metrics(self.latest_round.records, kept),
            }
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
            if pairs[0]:
                self._train = pairs
                break
            if self._train is not None:
                rank_zero_warn(
                    f"expert iteration step {step}: no sample was correct; training again on "
                    "the previous step's kept set"
                )
                break
        else:
            raise ValueError(
                f"expert iteration: no correct sample in {_FIRST_STEP_TRIES} × "
                f"{self.questions_per_step} questions × {self.group_size} samples, so there is "
                "nothing to imitate. Start from a model that solves some of them (an SFT warm "
                "start), raise group_size or sampling.temperature, or use easier questions."
            )
        self._step_key = step

    def _pairs(
        self, kept: list[tuple[str, str]]
    ) -> tuple[list[str], list[str], list[int], list[int]]:
        end = end_of_response(self.template, self.tokenizer) if self.end_with_eos else ""
        responses = [r if r.endswith(end) else r + end for _, r in kept]
        return self.sized_pairs([p for p, _ in kept], responses)  # too long: dropped, counted

    def _step_metrics(self, records: list[dict[str, Any]], kept: list) -> dict[str, float]:
        by_question: dict[int, list[bool]] = {}
        for r in records:
            by_question.setdefault(r["example_index"], []).append(bool(r["correct"]))
        solved = [any(v) for v in by_question.values()]
        return {
            EI_KEPT: float(len(kept)),
            EI_KEPT_FRACTION: len(kept) / max(len(records), 1),
            EI_SOLVED_FRAC: sum(solved) / max(len(solved), 1),
            EI_UNSOLVED: float(len(solved) - sum(solved)),
        }

    def state_dict(self) -> dict[str, Any]:
        # The kept set came from weights a resumed run no longer has: checkpoint it.
        prompts, responses, counts, lengths = self._train or ([], [], [], [])
        return {
            "step": self._step_key,
            "prompts": prompts,
            "responses": responses,
            "counts": counts,
            "lengths": lengths,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("step") is None:
            return
        self._step_key = int(state["step"])
        prompts, responses = list(state["prompts"]), list(state["responses"])
        self._train = (prompts, responses, list(state["counts"]), list(state["lengths"]))
