"""SFTDataModule: prompt/response pairs for training, prompts with answers for validation."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_align.data.sources import Example, Layout, filter_correct, load_examples, reference_to_sft
from lit_align.data.templates import TemplateName, format_prompt
from lit_align.ops import tokenize_prompt_and_output
from lit_align.rollout.sync import EngineConfig, build_engine

__all__ = ["PromptDataset", "SFTDataModule", "WindowBatchSampler"]


class WindowBatchSampler(Sampler[list[tuple[int, float]]]):
    """Shuffled micro-batches, grouped in accumulation windows; each index carries its window's
    token normalizer (response tokens in the window ÷ accumulation steps), so the per-micro-batch
    token sums add up to the exact token mean of the window.

    Args:
        token_counts: response tokens of each example.
        micro_batch_size: examples per micro-batch.
        accumulate: micro-batches per optimizer step.
        seed: shuffle seed; the order depends on (seed, epoch) only, so resumed runs replay it.
        rank: this process's rank; ranks take disjoint, equally long slices.
        world_size: number of ranks.
    """

    def __init__(
        self,
        token_counts: Sequence[int],
        micro_batch_size: int,
        accumulate: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.token_counts = list(token_counts)
        self.micro_batch_size = micro_batch_size
        self.accumulate = accumulate
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _micro_batches(self) -> list[list[int]]:
        order = list(range(len(self.token_counts)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        per_rank = len(order) // self.world_size
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return [
            mine[i : i + self.micro_batch_size] for i in range(0, len(mine), self.micro_batch_size)
        ]

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        batches = self._micro_batches()
        for w in range(0, len(batches), self.accumulate):
            window = batches[w : w + self.accumulate]
            tokens = sum(self.token_counts[i] for b in window for i in b)
            normalizer = max(tokens, 1) / self.accumulate
            for b in window:
                yield [(i, normalizer) for i in b]

    def __len__(self) -> int:
        per_rank = len(self.token_counts) // self.world_size
        return -(-per_rank // self.micro_batch_size)


class _PairDataset(Dataset):
    def __init__(self, prompts: list[str], responses: list[str]) -> None:
        self.prompts, self.responses = prompts, responses

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, key: tuple[int, float]) -> tuple[str, str, float]:
        i, normalizer = key
        return self.prompts[i], self.responses[i], normalizer


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


class SFTDataModule(L.LightningDataModule):
    """Supervised pairs for training and prompts for validation by generation.

    The tokenizer and the policy come from the LightningModule (``tokenizer``, ``model``); the
    DataModule owns the rollout engine used by validation (``engine``).

    Args:
        train_source: JSONL path, ``hf:NAME`` or ``synthetic:TASK`` (see ``lit_align.data.sources``).
        val_source: the same for validation prompts; None disables validation.
        template: prompt template (``r1_zero``, ``question_only``, ``gsm8k_chat``, ``demo``);
            pre-formatted SFT prompts are used as they are.
        responses: ``given`` (the rows' responses) or ``reference`` (convert GSM8K/MATH reference
            solutions into r1_zero responses, or the XML format for ``gsm8k_chat``).
        limit: seeded subset size of the training set (128, 256, …; None: all).
        val_limit: seeded subset size of the validation set.
        correct_only: keep only examples whose response's answer grades correct.
        micro_batch_size: examples per training micro-batch.
        val_batch_size: prompts per validation generation batch.
        max_length: drop training pairs longer than this many tokens (None: keep all).
        seed: seed of subsets and of the shuffle.
        on_error: ``raise`` on a malformed row (file, line and field named) or ``skip`` it.
        layout: row layout of local files (``auto`` detects it).
        split: split of ``hf:`` sources; validation uses ``val_split``.
        val_split: split of ``hf:`` validation sources.
        hf_config: configuration of ``hf:`` sources (``main`` for ``openai/gsm8k``).
        synthetic_size: examples of a synthetic training task (validation uses ``val_limit``
            or 64).
        engine: rollout engine settings (``backend: hf`` or ``vllm``).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train_source: str,
        val_source: str | None = None,
        template: TemplateName = "r1_zero",
        responses: Literal["given", "reference"] = "given",
        limit: int | None = None,
        val_limit: int | None = None,
        correct_only: bool = False,
        micro_batch_size: int = 4,
        val_batch_size: int = 32,
        max_length: int | None = None,
        seed: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        layout: Layout = "auto",
        split: str = "train",
        val_split: str = "test",
        hf_config: str | None = None,
        synthetic_size: int = 1024,
        engine: EngineConfig | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if micro_batch_size < 1 or val_batch_size < 1:
            raise ValueError("micro_batch_size and val_batch_size must be >= 1")
        if responses not in ("given", "reference"):
            raise ValueError(f"unknown responses {responses!r}; accepted values: given, reference")
        self.train_source, self.val_source = train_source, val_source
        self.template = template
        self.responses = responses
        self.limit, self.val_limit = limit, val_limit
        self.correct_only = correct_only
        self.micro_batch_size, self.val_batch_size = micro_batch_size, val_batch_size
        self.max_length = max_length
        self.seed = seed
        self.on_error = on_error
        self.layout = layout
        self.split, self.val_split = split, val_split
        self.hf_config = hf_config
        self.synthetic_size = synthetic_size
        self.engine_config = engine or EngineConfig()
        self.num_workers = num_workers
        self._engine: Any = None
        self._train: tuple[list[str], list[str], list[int]] | None = None
        self._val: PromptDataset | None = None
        self.stats: dict[str, int] = {}

    # ------------------------------------------------------------------ wiring

    @property
    def module(self) -> Any:
        if self.trainer is None or self.trainer.lightning_module is None:
            raise RuntimeError(
                "SFTDataModule needs a Trainer with a LightningModule (for tokenizer and model)"
            )
        return self.trainer.lightning_module

    @property
    def tokenizer(self) -> Any:
        return self.module.tokenizer

    @property
    def engine(self) -> Any:
        """The rollout engine, built on first use from the module's policy."""
        if self._engine is None:
            module = self.module
            self._engine = build_engine(
                self.engine_config, module.model, module.tokenizer, module.model_name_or_path
            )
        return self._engine

    def _load(
        self, source: str, split: str, limit: int | None, size: int, seed: int
    ) -> list[Example]:
        return load_examples(
            source,
            split=split,
            layout=self.layout,
            limit=limit,
            seed=seed,
            on_error=self.on_error,
            hf_config=self.hf_config,
            size=size,
        )

    def _prompt(self, example: Example) -> str:
        return (
            example.prompt
            if example.prompt is not None
            else format_prompt(self.template, example.question, self.tokenizer)
        )

    # ------------------------------------------------------------------ data

    def setup(self, stage: str) -> None:
        if stage == "fit" and self._train is None:
            examples = self._load(
                self.train_source, self.split, self.limit, self.synthetic_size, self.seed
            )
            if self.responses == "reference":
                style = "xml" if self.template == "gsm8k_chat" else "r1_zero"
                examples = [reference_to_sft(e, style) for e in examples]
            missing = sum(e.response is None for e in examples)
            if missing:
                raise ValueError(
                    f"{missing} training examples from {self.train_source!r} have no response; use an SFT "
                    "file (prompt, response), or set responses: reference for GSM8K/MATH files"
                )
            if self.correct_only:
                before = len(examples)
                examples = filter_correct(examples)
                self.stats["correct_only_dropped"] = before - len(examples)
            prompts = [self._prompt(e) for e in examples]
            responses = [e.response or "" for e in examples]
            counts = [
                len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses
            ]
            if self.max_length is not None:
                prompt_lens = [
                    len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
                ]
                keep = [
                    i
                    for i, (pl, rl) in enumerate(zip(prompt_lens, counts, strict=True))
                    if pl + rl <= self.max_length
                ]
                self.stats["too_long_dropped"] = len(prompts) - len(keep)
                prompts, responses, counts = (
                    [x[i] for i in keep] for x in (prompts, responses, counts)
                )
            if not prompts:
                raise ValueError(
                    f"no training examples left from {self.train_source!r} (see stats: {self.stats})"
                )
            self.stats["train_examples"] = len(prompts)
            self._train = (prompts, responses, counts)
        if stage in ("fit", "validate") and self._val is None and self.val_source:
            # Another seed, so synthetic validation problems are drawn independently of training ones.
            examples = self._load(
                self.val_source, self.val_split, self.val_limit, self.val_limit or 64, self.seed + 1
            )
            prompts = [self._prompt(e) for e in examples]
            ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            self._val = PromptDataset(prompts, ids, [e.answer for e in examples])

    def _collate(self, items: list[tuple[str, str, float]]) -> dict[str, Any]:
        prompts, responses, normalizers = zip(*items, strict=True)
        batch = tokenize_prompt_and_output(list(prompts), list(responses), self.tokenizer)
        batch["token_normalizer"] = normalizers[0]
        return batch

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "setup('fit') first"
        prompts, responses, counts = self._train
        trainer = self.trainer
        sampler = WindowBatchSampler(
            counts,
            self.micro_batch_size,
            accumulate=trainer.accumulate_grad_batches if trainer else 1,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)
        return DataLoader(
            _PairDataset(prompts, responses),
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self._val is None:
            return []
        return DataLoader(
            self._val, batch_size=self.val_batch_size, shuffle=False, collate_fn=_as_list
        )
