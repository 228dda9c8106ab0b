"""The declared seam between a training module and its DataModule.

Lightning joins the two through the trainer (``trainer.datamodule``, ``trainer.lightning_module``);
lit_align never reaches across by attribute name. Each side asks the trainer for the other side
*as a protocol* (:func:`task_data`, :func:`round_data`, :func:`policy_source`), which checks the
object and names what is missing. A DataModule or module written against these protocols alone
works with lit_align's other side (``tests/test_contracts.py`` trains through minimal fakes).

- :class:`PolicySource` — what a DataModule needs from the module: the model whose weights it
  pushes into its rollout engine, the tokenizer that encodes its prompts, where the model came
  from (an engine that loads weights itself, vLLM, starts from there).
- :class:`TaskData` — what every lit_align module needs from its DataModule: the engine holding
  the policy's weights of a given step (the DataModule owns the engine and its sync), the
  evaluator that grades generations, the task's sampling defaults (stop strings), validation data.
- :class:`RolloutData` — what :class:`~lit_align.modules.GRPOModule` needs on top: the current
  round's buffer (:class:`RoundBuffer`) and its geometry.
- :class:`RoundProducer` — what callbacks read: the latest generated :class:`~lit_align.rounds.Round`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from lit_align.engines.base import RolloutEngine, SamplingConfig
from lit_align.rewards.evaluators import RewardEvaluator
from lit_align.rounds import EpisodeSettings, Round

__all__ = [
    "PolicySource",
    "RolloutData",
    "RoundBuffer",
    "RoundProducer",
    "TaskData",
    "latest_round",
    "policy_source",
    "round_data",
    "task_data",
]


@runtime_checkable
class PolicySource(Protocol):
    """What a DataModule needs from the LightningModule it feeds."""

    @property
    def model(self) -> nn.Module:
        """The Hugging Face causal LM being trained (its weights go to the engine)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The tokenizer prompts are encoded with."""
        ...

    @property
    def model_name_or_path(self) -> str:
        """Where the model came from (hub id, directory, ``tiny:…``)."""
        ...


@runtime_checkable
class TaskData(Protocol):
    """What every lit_align training module needs from its DataModule."""

    @property
    def evaluator(self) -> RewardEvaluator:
        """Grades generations (rewards and validation metrics)."""
        ...

    def synced_engine(self, step: int) -> RolloutEngine:
        """The rollout engine, holding the policy's weights of optimizer step ``step``."""
        ...

    def task_sampling(self, sampling: SamplingConfig) -> SamplingConfig:
        """``sampling`` with the task's defaults filled in (stop strings when it names none,
        and the environment's, which end a turn at a tool call)."""
        ...

    def episode_settings(self, examples: Sequence[Any]) -> EpisodeSettings:
        """What episodes of these examples need: the environment (None: one completion per
        sample), the examples, the tokenizer, the token budget."""
        ...

    def val_dataloader(self) -> Any:
        """Validation batches: lists of rows with ``prompt``, ``prompt_ids`` and ``answer``."""
        ...


@runtime_checkable
class RoundBuffer(Protocol):
    """A generated round as training data."""

    def __len__(self) -> int: ...

    def shortest_first(self) -> list[int]:
        """Sample indices sorted by length (little padding per micro-batch)."""
        ...

    def collate(self, indices: Sequence[Any], with_stored: bool = True) -> dict[str, Any]:
        """Right-padded tensors of the samples ``indices``."""
        ...

    def store(self, name: str, indices: Sequence[int], log_probs: torch.Tensor) -> None:
        """Keep per-round log-probs (``old``, ``ref``) of a collated batch's samples."""
        ...


@runtime_checkable
class RolloutData(TaskData, Protocol):
    """What :class:`~lit_align.modules.GRPOModule` needs on top of :class:`TaskData`."""

    @property
    def micro_batch_size(self) -> int:
        """Samples per forward pass, per rank."""
        ...

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps per round (one round is one epoch)."""
        ...

    @property
    def buffer(self) -> RoundBuffer | None:
        """The current round (None before the first)."""
        ...

    @property
    def max_staleness(self) -> int:
        """Optimizer steps allowed between a round's sampling weights and its training (0:
        every round is sampled by the policy that trains on it)."""
        ...


@runtime_checkable
class RoundProducer(Protocol):
    """A DataModule that generates rounds (GRPO, expert iteration); callbacks read the latest."""

    @property
    def latest_round(self) -> Round | None: ...


_P = TypeVar("_P")


def _side(obj: Any, protocol: type[_P], needs: str, what: str) -> _P:
    if obj is None or not isinstance(obj, protocol):
        raise TypeError(
            f"{what} is {type(obj).__name__ if obj is not None else 'missing'}; it must provide "
            f"{needs} (lit_align.contracts.{protocol.__name__})"
        )
    return obj


def task_data(trainer: Any) -> TaskData:
    """The trainer's DataModule as :class:`TaskData` (TypeError naming what is missing)."""
    return _side(
        getattr(trainer, "datamodule", None),
        TaskData,
        "evaluator, synced_engine(step), task_sampling(sampling) and val_dataloader()",
        "the DataModule",
    )


def round_data(trainer: Any) -> RolloutData:
    """The trainer's DataModule as :class:`RolloutData` (GRPO's rounds)."""
    return _side(
        getattr(trainer, "datamodule", None),
        RolloutData,
        "TaskData plus micro_batch_size, steps_per_round, buffer (the round) and "
        "max_staleness, as "
        "lit_align.data.RolloutDataModule does",
        "the DataModule",
    )


def policy_source(trainer: Any) -> PolicySource:
    """The trainer's LightningModule as :class:`PolicySource`."""
    return _side(
        getattr(trainer, "lightning_module", None),
        PolicySource,
        "model, tokenizer and model_name_or_path, as lit_align.modules.PolicyModule does",
        "the LightningModule",
    )


def latest_round(trainer: Any) -> Round | None:
    """The DataModule's latest round; None for DataModules without rounds (SFT)."""
    data = getattr(trainer, "datamodule", None)
    return data.latest_round if isinstance(data, RoundProducer) else None
