"""Helpers shared by the test files: a quiet CPU trainer, a reward that varies for untrained tiny
models, a small rollout DataModule, and a demo run read back from its event files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_align.rewards import RewardEvaluator

__all__ = [
    "DistinctCharacters",
    "check_demo_accuracy",
    "cpu_trainer",
    "cpu_vllm_engine",
    "fit_demo",
    "scalars",
    "tiny_rollout_data",
]

ROOT = Path(__file__).resolve().parents[1]

# A CPU trainer that writes nothing and validates only when a test asks: no logger, checkpoints,
# progress bar, model summary or sanity pass; one epoch is one round (reloaded dataloaders).
_QUIET: dict[str, Any] = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    num_sanity_val_steps=0,
    limit_val_batches=0,
    max_epochs=2,
    reload_dataloaders_every_n_epochs=1,
)


def cpu_trainer(callbacks: Any = (), **kw: Any) -> L.Trainer:
    """A quiet CPU ``L.Trainer``; keyword arguments override the defaults above."""
    return L.Trainer(callbacks=list(callbacks), **{**_QUIET, **kw})


class DistinctCharacters(RewardEvaluator):
    """A reward that varies for an untrained model (the math grader gives it all zeros)."""

    component_names = ("distinct",)
    total_weights = (1.0,)

    def score(self, prompts, completions, answers):
        return torch.tensor([[len(set(c)) / 10.0] for c in completions])


def tiny_rollout_data(**kw: Any) -> Any:
    """A RolloutDataModule on the synthetic addition task: 4 prompts × 4 samples per round, short
    completions, a reward that varies; keyword arguments override."""
    from lit_align.data import RolloutDataModule
    from lit_align.engines import SamplingConfig

    defaults: dict[str, Any] = dict(
        train_source="synthetic:addition",
        template="demo",
        synthetic_size=64,
        group_size=4,
        rollout_batch_size=16,
        train_batch_size=16,
        micro_batch_size=4,
        sampling=SamplingConfig(max_new_tokens=8, min_new_tokens=1),
        evaluator=DistinctCharacters(),
    )
    return RolloutDataModule(**{**defaults, **kw})


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every TensorBoard scalar of a run directory, tag → values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def fit_demo(name: str, *configs: str) -> tuple[Path, dict[str, list[float]]]:
    """``lit_align fit`` of the demo configs (paths under the repository; an item starting with
    ``--`` is passed as a flag) in the working directory, as the README runs it; the run
    directory ``runs/NAME/version_*`` and its scalars."""
    from lit_align.cli import main

    args = [
        arg
        for config in configs
        for arg in ((config,) if config.startswith("--") else ("--config", str(ROOT / config)))
    ]
    main(["fit", *args, "--trainer.enable_progress_bar", "false"])
    (run,) = (Path.cwd() / "runs" / name).glob("version_*")
    return run, scalars(run)


def cpu_vllm_engine(**kw: Any) -> Any:
    """An ``EngineConfig`` for vLLM's CPU build in tests: float32 (the trainer's dtype), a fixed
    256 MiB KV cache, no graph compilation, no sleep mode; keyword arguments override."""
    from lit_align.engines import EngineConfig

    defaults: dict[str, Any] = dict(
        backend="vllm",
        dtype="float32",
        kv_cache_memory_bytes=256 * 2**20,
        max_model_len=1024,
        enforce_eager=True,
        enable_sleep_mode=False,
    )
    return EngineConfig(**{**defaults, **kw})


def check_demo_accuracy(scalars: dict[str, list[float]], figure_name: str) -> list[float]:
    """A demo learned: validation accuracy rose by 0.2 or more and ended within 0.05 of the
    README's figure for this machine's kernels. Returns the accuracy curve."""
    from tests.figures import figure

    acc = scalars["val/accuracy"]
    assert len(acc) >= 2 and acc[-1] - acc[0] >= 0.2, acc
    assert abs(acc[-1] - figure(figure_name)) <= 0.05, acc  # the README's
    return acc


# A turn of the random tiny model ends (finish "stop", as a real model's turn ends at
# </tool_call>) at the first sampled token holding one of these characters: short turns.
SHORT_TURNS = list("aeiou0123456789 ")


class ScriptedEnvironment:
    """An environment for tests: answers each of an episode's first ``replies`` turns with a
    tool message naming the turn, then is done (deterministic, like every environment)."""

    tool_schemas: tuple = ()
    stop: tuple = ()

    def __init__(self, max_turns: int = 3, replies: int = 2) -> None:
        self.max_turns = max_turns
        self.replies = replies
        self.answered = 0  # turns it was asked about

    def respond(self, episodes: Any) -> list[Any]:
        from collections import Counter

        from lit_align.environments import Reply

        out = []
        self.answered += len(episodes)
        for _, turns in episodes:
            if len(turns) > self.replies:
                out.append(Reply())
                continue
            message = {"role": "tool", "name": "echo", "content": f"result {len(turns)}"}
            out.append(Reply([message], Counter(tool_calls=1)))
        return out
