"""What SFT and rollout DataModules share: the task (template, evaluator), validation prompts,
the rollout engine they own (and its weight sync), and the wiring to the LightningModule's
tokenizer and policy."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lit_align.contracts import PolicySource, policy_source
from lit_align.data.sources import Example, Layout, load_examples
from lit_align.data.templates import (
    TEMPLATE_NAMES,
    TemplateName,
    format_prompt,
    with_template_stops,
)
from lit_align.engines.base import RolloutEngine, SamplingConfig, check_weight_version
from lit_align.engines.factory import EngineConfig, build_engine
from lit_align.engines.weights import sync_weights
from lit_align.environments.base import Environment, tool_list, with_environment_stops
from lit_align.metrics import WEIGHT_SYNC_S
from lit_align.rewards.evaluators import GSM8kEvaluator, MathEvaluator, RewardEvaluator
from lit_align.rounds import EpisodeSettings

__all__ = ["PromptDataset", "TaskDataModule", "check_counts", "default_evaluator"]


class PromptDataset(Dataset):
    """Prompts (text and token ids) with their ground-truth answers, for generation."""

    def __init__(self, prompts: list[str], prompt_ids: list[list[int]], answers: list[Any]) -> None:
        self.rows = [
            {"prompt": p, "prompt_ids": i, "answer": a}
            for p, i, a in zip(prompts, prompt_ids, answers, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def seeded_stream(items: list[Any], per_step: int, step: int, seed: int) -> list[Any]:
    """The ``step``-th ``per_step`` items of an endless stream of seeded shuffled passes over
    ``items`` (pass k shuffled by ``seed + k``): every item once per pass, in a new order each
    pass, and the same items for the same step however the run was interrupted."""
    chosen: list[Any] = []
    while len(chosen) < per_step:
        pass_index, offset = divmod(step * per_step + len(chosen), len(items))
        order = list(range(len(items)))
        random.Random(seed + pass_index).shuffle(order)
        chosen.extend(items[i] for i in order[offset : offset + per_step - len(chosen)])
    return chosen


def check_counts(owner: str, **counts: int | None) -> None:
    """Raise ValueError naming the first count below 1 (None means unset and passes)."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


def default_evaluator(template: str, *sources: str | None) -> RewardEvaluator:
    """The evaluator that grades a template's answer format, or the task's own scorer when a
    source is a ``reasoning_gym:`` task."""
    if any(s and s.startswith("reasoning_gym:") for s in sources):
        from lit_align.rewards.reasoning_gym import ReasoningGymEvaluator

        return ReasoningGymEvaluator("boxed" if template == "question_only" else "answer_tag")
    if template == "gsm8k_chat":
        return GSM8kEvaluator()
    if template in ("story", "story_chat"):
        raise ValueError(
            f"template {template!r} has no verifier: set data.init_args.evaluator to a "
            "lit_align.rewards.JudgeEvaluator (see configs/grpo_creative.yaml)"
        )
    formats = {"question_only": "question_only", "demo_chat": "answer_tag"}
    return MathEvaluator(formats.get(template, "r1_zero"))  # type: ignore[arg-type]


class TaskDataModule(L.LightningDataModule):
    """Base of the lit_align DataModules.

    The tokenizer and the policy come from the LightningModule (its ``tokenizer`` and ``model``);
    the DataModule owns the rollout engine and is the one place that pushes the policy's weights
    into it: :meth:`synced_engine` (called before every round and every validation) syncs when the
    engine's ``weight_version`` is behind the trainer's step, and logs ``time/weight_sync_s``.

    Args:
        val_source: validation prompts: JSONL path, ``hf:NAME`` or ``synthetic:TASK``; None
            disables validation.
        template: prompt template (``r1_zero``, ``question_only``, ``gsm8k_chat``, ``demo``).
        evaluator: grades generations (training rewards for rollouts, validation for both);
            default: the template's (``MathEvaluator`` of the r1_zero or question_only format,
            ``GSM8kEvaluator`` for ``gsm8k_chat``), so switching the template is one flag; for
            ``reasoning_gym:`` sources the task's own scorer (``ReasoningGymEvaluator``).
        val_limit: seeded subset size of the validation set (synthetic tasks: its size, default 64).
        val_batch_size: prompts per validation generation batch.
        seed: seed of subsets, shuffles and sampling.
        on_error: ``raise`` on a malformed row (file, line and field named) or ``skip`` it.
        layout: row layout of local files (``auto`` detects it).
        split: split of ``hf:`` training sources.
        val_split: split of ``hf:`` validation sources.
        hf_config: configuration of ``hf:`` sources (``main`` for ``openai/gsm8k``).
        engine: rollout engine settings (``backend: hf`` or ``vllm``).
        num_workers: DataLoader workers.
        environment: what answers the model between its turns in rollouts (e.g.
            :class:`~lit_align.environments.ToolEnvironment`: its tools are listed in the
            prompt through the chat template, its stop strings end a turn at a call); None: one
            completion per sample. Its messages are never trained on.
        max_total_tokens: an episode's tokens after the prompt, the model's and the
            environment's together (None: no limit but the environment's max_turns of
            sampling.max_new_tokens each); a longer episode is cut there and counts as
            truncated (``advantages.mask_truncated``).
    """

    def __init__(
        self,
        val_source: str | None = None,
        template: TemplateName = "r1_zero",
        evaluator: RewardEvaluator | None = None,
        val_limit: int | None = None,
        val_batch_size: int = 32,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        layout: Layout = "auto",
        split: str = "train",
        val_split: str = "test",
        hf_config: str | None = None,
        engine: EngineConfig | None = None,
        num_workers: int = 0,
        environment: Environment | None = None,
        max_total_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_counts(type(self).__name__, val_batch_size=val_batch_size)
        if template not in TEMPLATE_NAMES:
            raise ValueError(
                f"unknown template {template!r}; accepted values: {', '.join(TEMPLATE_NAMES)}"
            )
        self.val_source = val_source
        self.template = template
        self._evaluator = evaluator  # None: the default, chosen once the sources are known
        self.val_limit = val_limit
        self.val_batch_size = val_batch_size
        self.seed = seed
        self.on_error = on_error
        self.layout = layout
        self.split, self.val_split = split, val_split
        self.hf_config = hf_config
        self.engine_config = engine or EngineConfig()
        self.num_workers = num_workers
        self.environment = environment
        self.max_total_tokens = max_total_tokens
        self._engine: Any = None
        self._val: PromptDataset | None = None
        self._loaded: dict[tuple, list[Example]] = {}

    # ------------------------------------------------------------------ wiring

    @property
    def evaluator(self) -> RewardEvaluator:
        """What grades generations: the one given, else the template's (a ``reasoning_gym:``
        source's own scorer)."""
        if self._evaluator is None:
            sources = [source for source, *_ in self.data_sources()]
            self._evaluator = default_evaluator(self.template, *sources)
        return self._evaluator

    def policy(self) -> PolicySource:
        """The LightningModule being trained, through its declared contract (model, tokenizer)."""
        return policy_source(self.trainer)

    @property
    def tokenizer(self) -> Any:
        return self.policy().tokenizer

    @property
    def engine(self) -> RolloutEngine:
        """The rollout engine, built on first use (no weights are pushed: see :meth:`synced_engine`)."""
        if self._engine is None:
            policy = self.policy()
            self._engine = build_engine(
                self.engine_config, policy.model, policy.tokenizer, policy.model_name_or_path
            )
        return self._engine

    def synced_engine(self, step: int) -> RolloutEngine:
        """The engine, holding the policy's weights of optimizer step ``step``.

        The only place weights move from the policy to the engine: a sync runs when the engine's
        version differs from ``step`` (a new engine, a finished round, a restored checkpoint),
        on every rank (FSDP gathers are collectives), and its seconds are logged as
        ``time/weight_sync_s``.
        """
        engine = self.engine
        if engine.weight_version != step:
            seconds = sync_weights(engine, self.policy().model, step)
            logger = self.trainer.logger if self.trainer is not None else None
            if logger is not None:
                logger.log_metrics({WEIGHT_SYNC_S: seconds}, step=step)
        check_weight_version(engine, step)  # an engine whose load_weights forgot its version
        return engine

    def load(
        self, source: str, split: str, limit: int | None, seed: int, size: int = 1024
    ) -> list[Example]:
        """Examples of a source, loaded once (the preflight and ``setup`` share them)."""
        key = (source, split, limit, seed, size)
        if key not in self._loaded:
            self._loaded[key] = load_examples(
                source,
                split=split,
                layout=self.layout,
                limit=limit,
                seed=seed,
                on_error=self.on_error,
                hf_config=self.hf_config,
                size=size,
            )
        return self._loaded[key]

    def data_sources(self) -> list[tuple[str, str, int | None, int, int]]:
        """(source, split, limit, seed, size) of every dataset ``setup`` loads."""
        if not self.val_source:
            return []
        # Another seed, so synthetic validation problems are drawn independently of training.
        return [
            (self.val_source, self.val_split, self.val_limit, self.seed + 1, self.val_limit or 64)
        ]

    def check_trainer(self, trainer: Any) -> None:
        """Raise ValueError, with the fix, for trainer settings this DataModule cannot run with."""
        self.check_sharding(trainer)

    def preflight(self, trainer: Any | None) -> None:
        """Check the trainer's settings and load the data before anything is written (the CLI
        calls it before a run directory exists), so bad input fails first and leaves nothing.
        Without a trainer (a warm start has to run first) only the data is loaded."""
        if trainer is not None:
            self.check_trainer(trainer)
        for args in self.data_sources():
            self.load(*args)

    def group_sampling(
        self, given: SamplingConfig | None, group_size: int, unit: str
    ) -> SamplingConfig:
        """Sampling for groups of ``group_size`` samples per prompt: ``n`` is the group size and
        the seed is derived per ``unit`` (round, step) from ``seed``, so neither may be set;
        ``stop: None`` means the template's stop strings."""
        given = given or SamplingConfig(temperature=1.0, max_new_tokens=1024, min_new_tokens=4)
        if given.n not in (1, group_size) or given.seed != 0:
            raise ValueError(
                f"{type(self).__name__}: sampling.n and sampling.seed are derived (n = "
                f"group_size, the sampling seed from seed and the {unit}); set group_size and "
                "seed instead"
            )
        return with_template_stops(replace(given, n=group_size), self.template)

    def task_sampling(self, sampling: SamplingConfig) -> SamplingConfig:
        """``sampling`` with this task's stop strings when it names none, and the
        environment's (a turn ends at a tool call)."""
        return self.with_environment_stops(with_template_stops(sampling, self.template))

    def with_environment_stops(self, sampling: SamplingConfig) -> SamplingConfig:
        """``sampling`` whose turns also end at the environment's stop strings (a tool call)."""
        return with_environment_stops(sampling, self.environment)

    def episode_settings(self, examples: Sequence[Any]) -> EpisodeSettings:
        """What a round's episodes need from this DataModule (the environment, the examples it
        reads, the tokenizer that renders its messages, the token budget)."""
        return EpisodeSettings(self.environment, examples, self.tokenizer, self.max_total_tokens)

    def prompt_text(self, example: Example) -> str:
        if example.prompt is not None:
            return example.prompt
        return format_prompt(
            self.template, example.question, self.tokenizer, tool_list(self.environment)
        )

    def prompt_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def check_sharding(self, trainer: Any) -> None:
        """lit_align shards data itself (by window or by rollout round); Lightning must not."""
        if (
            trainer is not None
            and trainer.world_size > 1
            and getattr(trainer._accelerator_connector, "use_distributed_sampler", False)
        ):
            raise ValueError(
                f"{type(self).__name__} shards the data across ranks itself; set trainer.use_distributed_sampler: false"
            )

    def derive_accumulation(
        self, trainer: Any, batch_size: int, micro_batch_size: int, field: str
    ) -> int:
        """Set ``trainer.accumulate_grad_batches`` to ``batch_size / (micro_batch_size × ranks)``.

        The batch sizes are the one source of truth; a value set by hand that disagrees stops
        the run with the fix (1, Lightning's default, is taken as unset).
        """
        ranks = trainer.world_size
        if batch_size % (micro_batch_size * ranks):
            raise ValueError(
                f"{type(self).__name__}: {field} ({batch_size}) must be divisible by "
                f"micro_batch_size × ranks ({micro_batch_size} × {ranks})"
            )
        expected = batch_size // (micro_batch_size * ranks)
        given = trainer.accumulate_grad_batches
        if given not in (1, expected):
            raise ValueError(
                f"{type(self).__name__}: trainer.accumulate_grad_batches is {given}, but {field} / "
                f"(micro_batch_size × ranks) = {batch_size} / ({micro_batch_size} × {ranks}) = "
                f"{expected}; remove trainer.accumulate_grad_batches (it is derived from the batch "
                f"sizes) or set trainer.accumulate_grad_batches: {expected}"
            )
        trainer.accumulate_grad_batches = expected
        return expected

    # ------------------------------------------------------------------ validation

    def setup_validation(self) -> None:
        if self._val is None and self.val_source:
            examples = self.load(*self.data_sources()[0])
            prompts = [self.prompt_text(e) for e in examples]
            self._val = PromptDataset(
                prompts, [self.prompt_ids(p) for p in prompts], [e.answer for e in examples]
            )

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return DataLoader(
            self._val, batch_size=self.val_batch_size, shuffle=False, collate_fn=_as_list
        )
