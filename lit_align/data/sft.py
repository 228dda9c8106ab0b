"""SFTDataModule: prompt/response pairs for training, prompts with answers for validation."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from torch.utils.data import DataLoader, Dataset, Sampler

from lit_align.data.base import TaskDataModule, check_counts
from lit_align.data.sources import Example, filter_correct, reference_to_sft
from lit_align.data.templates import end_of_response
from lit_align.environments.episodes import reply_text
from lit_align.ops import Turns, tokenize_prompt_and_turns, turn_ids

__all__ = ["SFTDataModule", "WindowBatchSampler"]


class WindowBatchSampler(Sampler[list[tuple[int, float]]]):
    """Shuffled micro-batches grouped in accumulation windows, sharded window by window.

    Each global window holds ``micro_batch_size × accumulate × world_size`` examples of the
    epoch's seeded permutation; every rank takes its equal slice of every window. Each index
    carries the window's token normalizer, (response tokens in the whole window) ÷ (accumulate ×
    world_size): per-micro-batch token sums divided by it, averaged over ranks (DDP) and
    accumulated (÷ accumulate) add up to the exact token mean of the window. So one process with
    ``accumulate × world_size`` steps sees the same windows and takes the same steps.

    With ``lengths`` and ``length_bucket``, examples of similar length share windows (and so
    micro-batches), which cuts padding: each run of ``length_bucket`` shuffled examples is sorted by
    length, cut into windows, and the windows are shuffled (the grouping of Hugging Face's
    ``group_by_length``). Each micro-batch's loss is the same as it would be with more padding;
    only which examples share a step changes.

    Args:
        token_counts: response tokens of each example.
        micro_batch_size: examples per micro-batch.
        accumulate: micro-batches per optimizer step (per rank).
        seed: shuffle seed; the order depends on (seed, epoch) only, so resumed runs replay it.
        rank: this process's rank.
        world_size: number of ranks.
        lengths: total tokens (prompt + response) of each example, for length grouping.
        length_bucket: examples sorted together (rounded up to whole windows); None: no grouping.
    """

    def __init__(
        self,
        token_counts: Sequence[int],
        micro_batch_size: int,
        accumulate: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | None = None,
        length_bucket: int | None = None,
    ) -> None:
        if length_bucket is not None and lengths is None:
            raise ValueError("length_bucket needs the examples' lengths")
        if lengths is not None and len(lengths) != len(token_counts):
            raise ValueError(
                f"lengths has {len(lengths)} entries for {len(token_counts)} token_counts"
            )
        self.lengths = list(lengths) if lengths is not None else None
        self.length_bucket = length_bucket
        self.token_counts = list(token_counts)
        self.micro_batch_size = micro_batch_size
        self.accumulate = accumulate
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, micro-batches already trained)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches: int) -> None:
        """The next pass is over ``epoch`` and starts after its first ``batches`` micro-batches
        (where a checkpoint was taken); later passes are whole."""
        self._resume = (epoch, batches)

    def _windows(self) -> Iterator[list[int]]:
        order = list(range(len(self.token_counts)))
        rng = random.Random(self.seed * 100_003 + self.epoch)
        rng.shuffle(order)
        size = self.micro_batch_size * self.accumulate * self.world_size
        windows = [order[start : start + size] for start in range(0, len(order), size)]
        if self.length_bucket is not None and self.lengths is not None:
            lengths, grouped = self.lengths, []
            span = -(-self.length_bucket // size) * size  # whole windows per sorted group
            for start in range(0, len(order), span):
                group = sorted(order[start : start + span], key=lambda i: lengths[i])
                chunks = [group[k : k + size] for k in range(0, len(group), size)]
                whole = [c for c in chunks if len(c) == size]
                rng.shuffle(whole)  # long and short steps interleave
                grouped.extend(whole + chunks[len(whole) :])  # the epoch's remainder stays last
            windows = grouped
        for window in windows:
            window = window[: len(window) // self.world_size * self.world_size]  # equal rank slices
            if window:
                yield window

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        skip = 0
        if self._resume is not None:
            (self.epoch, skip), self._resume = self._resume, None
        for k, batch in enumerate(self._batches()):
            if k >= skip:
                yield batch

    def _batches(self) -> Iterator[list[tuple[int, float]]]:
        for window in self._windows():
            tokens = sum(self.token_counts[i] for i in window)
            normalizer = max(tokens, 1) / (self.accumulate * self.world_size)
            share = len(window) // self.world_size
            mine = window[self.rank * share : (self.rank + 1) * share]
            for m in range(0, len(mine), self.micro_batch_size):
                yield [(i, normalizer) for i in mine[m : m + self.micro_batch_size]]

    def __len__(self) -> int:
        return sum(
            -(-(len(w) // self.world_size) // self.micro_batch_size) for w in self._windows()
        )


class _ResumableLoader(DataLoader):
    """The training DataLoader: it owns the epoch of its batch sampler and its place in it.

    Each pass starts with the trainer's epoch (Lightning calls ``set_epoch`` on a loader's
    ``sampler`` only, never on a ``batch_sampler``, so without this every epoch would replay
    epoch 0's order). Lightning checkpoints ``state_dict`` and restores ``load_state_dict``, so a
    run resumed from a mid-epoch checkpoint continues with the next micro-batch instead of
    starting the epoch again.
    """

    def __init__(
        self,
        *args: Any,
        epoch: Callable[[], int],
        position: Callable[[], tuple[int, int]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = epoch  # () -> the epoch a pass now starting belongs to
        self._position = position  # () -> (epoch, micro-batches trained in it) at a checkpoint

    def __iter__(self) -> Any:
        self.batch_sampler.set_epoch(self._epoch())
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position()
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Restored before Lightning has advanced its epoch counter past a finished epoch, so the
        # epoch to continue is decided here: the saved one, or the next when it was complete.
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self.batch_sampler):
            epoch, batches = epoch + 1, 0
        self.batch_sampler.resume_at(epoch, batches)


class _PairDataset(Dataset):
    def __init__(self, prompts: list[str], responses: list[str | Turns]) -> None:
        self.prompts, self.responses = prompts, responses

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, key: tuple[int, float]) -> tuple[str, str | Turns, float]:
        i, normalizer = key
        return self.prompts[i], self.responses[i], normalizer


class SFTDataModule(TaskDataModule):
    """Supervised pairs for training, prompts for validation by generation.

    Args:
        train_source: JSONL path, ``hf:NAME`` or ``synthetic:TASK`` (see ``lit_align.data.sources``).
        responses: ``given`` (the rows' responses) or ``reference`` (convert GSM8K/MATH reference
            solutions into r1_zero responses, or the XML format for ``gsm8k_chat``; rows that
            carry a response, such as ``lit_align generate`` output, keep theirs).
        limit: seeded subset size of the training set (128, 256, …; None: all).
        correct_only: keep only examples whose response grades correct (by the evaluator).
        micro_batch_size: examples per training micro-batch, per rank.
        batch_size: examples per optimizer step over all ranks; the trainer's
            ``accumulate_grad_batches`` is derived from it (batch_size / (micro_batch_size ×
            ranks)). None: one micro-batch per rank, unless accumulate_grad_batches is set.
        end_with_eos: end every training response with the end-of-turn token of the template
            (``<|im_end|>`` for chat templates, the tokenizer's EOS otherwise), counted in the
            loss, so the fine-tuned model stops by itself instead of running to max_new_tokens.
        max_length: drop training pairs longer than this many tokens (None: keep all).
        length_bucket: sort each run of this many shuffled training pairs by length before
            cutting it into optimizer steps, so micro-batches carry little padding (faster; the
            loss of a micro-batch does not depend on its padding). None: plain shuffle.
        synthetic_size: examples of a synthetic training task.
        **kwargs: validation, template, evaluator, engine… (see
            :class:`~lit_align.data.base.TaskDataModule`).
    """

    def __init__(
        self,
        train_source: str,
        responses: Literal["given", "reference"] = "given",
        limit: int | None = None,
        correct_only: bool = False,
        micro_batch_size: int = 4,
        batch_size: int | None = None,
        end_with_eos: bool = True,
        max_length: int | None = None,
        length_bucket: int | None = 256,
        synthetic_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_counts(
            "SFTDataModule", micro_batch_size=micro_batch_size, length_bucket=length_bucket
        )
        if batch_size is not None and batch_size % micro_batch_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be divisible by micro_batch_size ({micro_batch_size})"
            )
        if responses not in ("given", "reference"):
            raise ValueError(f"unknown responses {responses!r}; accepted values: given, reference")
        self.train_source = train_source
        self.responses = responses
        self.limit = limit
        self.correct_only = correct_only
        self.micro_batch_size = micro_batch_size
        self.batch_size = batch_size
        self.end_with_eos = end_with_eos
        self.max_length = max_length
        self.length_bucket = length_bucket
        self.synthetic_size = synthetic_size
        self._train: tuple[list[str], list[str | Turns], list[int], list[int]] | None = None
        self.stats: dict[str, int] = {}

    def check_trainer(self, trainer: Any) -> None:
        self.check_sharding(trainer)
        if self.batch_size is not None:
            self.derive_accumulation(trainer, self.batch_size, self.micro_batch_size, "batch_size")

    def data_sources(self) -> list[tuple[str, str, int | None, int, int]]:
        train = (self.train_source, self.split, self.limit, self.seed, self.synthetic_size)
        return [*super().data_sources(), train]

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None:
            self.check_trainer(self.trainer)
        if stage == "fit" and self._train is None:
            self._train = self._training_pairs()
        if stage in ("fit", "validate"):
            self.setup_validation()

    def _training_pairs(self) -> tuple[list[str], list[str | Turns], list[int], list[int]]:
        examples = self.load(*self.data_sources()[-1])
        if self.responses == "reference":
            style = "xml" if self.template == "gsm8k_chat" else "r1_zero"
            examples = [e if e.response else reference_to_sft(e, style) for e in examples]
        missing = sum(e.response is None for e in examples)
        if missing:
            raise ValueError(
                f"{missing} training examples from {self.train_source!r} have no response; use an SFT "
                "file (prompt, response), or set responses: reference for GSM8K/MATH files"
            )
        if self.correct_only:
            before = len(examples)
            examples = filter_correct(examples, self.evaluator)
            self.stats["correct_only_dropped"] = before - len(examples)
        prompts = [self.prompt_text(e) for e in examples]
        end = end_of_response(self.template, self.tokenizer) if self.end_with_eos else ""
        responses = [self._target(e, end) for e in examples]
        prompts, responses, counts, lengths = self.sized_pairs(prompts, responses)
        if not prompts:
            raise ValueError(
                f"no training examples left from {self.train_source!r} (see stats: {self.stats})"
            )
        self.stats["train_examples"] = len(prompts)
        return prompts, responses, counts, lengths

    def _target(self, example: Example, end: str) -> str | Turns:
        """What an example trains on, ending with ``end``: its response, or its transcript's
        turns with the environment's messages between them (rendered as in episodes; not
        trained on)."""
        if not example.transcript:
            response = example.response or ""
            return response if response.endswith(end) else response + end
        segments: list[tuple[str, bool]] = []
        pending: list[dict[str, str]] = []  # environment messages since the last turn
        for message in example.transcript:
            if message["role"] != "assistant":
                pending.append(message)
                continue
            if pending:
                segments.append((reply_text(self.tokenizer, pending), False))
                pending = []
            segments.append((message["content"], True))
        last = segments[-1][0]
        segments[-1] = (last if last.endswith(end) else last + end, True)
        return tuple(segments)

    def sized_pairs(
        self, prompts: list[str], responses: list[str | Turns]
    ) -> tuple[list[str], list[str | Turns], list[int], list[int]]:
        """(prompts, responses, trained response tokens, total tokens) of the pairs that fit
        ``max_length`` (the others are dropped and counted in ``stats``)."""
        rows = [turn_ids(r, self.tokenizer) for r in responses]
        counts = [sum(trained) for _, trained in rows]
        lengths = [
            len(self.prompt_ids(p)) + len(ids) for p, (ids, _) in zip(prompts, rows, strict=True)
        ]
        if self.max_length is not None:
            keep = [i for i, n in enumerate(lengths) if n <= self.max_length]
            self.stats["too_long_dropped"] = len(prompts) - len(keep)
            prompts, responses, counts, lengths = (
                [x[i] for i in keep] for x in (prompts, responses, counts, lengths)
            )
        return prompts, responses, counts, lengths

    def _collate(self, items: list[tuple[str, str, float]]) -> dict[str, Any]:
        prompts, responses, normalizers = zip(*items, strict=True)
        batch = tokenize_prompt_and_turns(list(prompts), list(responses), self.tokenizer)
        batch["token_normalizer"] = normalizers[0]
        return batch

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "setup('fit') first"
        prompts, responses, counts, lengths = self._train
        trainer = self.trainer
        sampler = WindowBatchSampler(
            counts,
            self.micro_batch_size,
            accumulate=trainer.accumulate_grad_batches if trainer else 1,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            lengths=lengths,
            length_bucket=self.length_bucket,
        )
        return _ResumableLoader(
            _PairDataset(prompts, responses),
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            epoch=self._next_epoch,
            position=self._position,
        )

    def _next_epoch(self) -> int:
        # Lightning's own epoch for samplers: right at the start of every epoch, including the
        # first pass after restoring an end-of-epoch checkpoint (current_epoch lags there).
        trainer = self.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_progress.current.processed

    def _position(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        # processed counts the micro-batch whose on_train_batch_end is saving the checkpoint
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
