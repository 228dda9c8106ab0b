"""Runs on disk, read back: TensorBoard scalars, the saved config, a sweep point's overrides,
the model's parameter count and an SFT run's number of training examples."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lit_align.metrics import VAL_ACCURACY

__all__ = ["Run", "Series", "find_runs"]

log = logging.getLogger(__name__)

ACCURACY = VAL_ACCURACY


@dataclass
class Series:
    """One scalar over a run: steps, seconds since the run's first event, values."""

    steps: list[int]
    seconds: list[float]
    values: list[float]

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Run:
    """A run directory (the one holding TensorBoard event files) and what it recorded.

    Attributes:
        name: its label: the sweep point's name, else the path relative to what was given.
        dir: the directory.
        overrides: the sweep point's overrides (empty outside a sweep).
    """

    name: str
    dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def scalars(self) -> dict[str, Series]:
        """Every scalar tag; a step logged twice (a resumed run) keeps its last value."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.dir), size_guidance={"scalars": 0})
        events.Reload()
        raw = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
        start = min((e[0].wall_time for e in raw.values() if e), default=0.0)
        out = {}
        for tag, items in raw.items():
            by_step = {e.step: (e.wall_time - start, e.value) for e in items}
            steps = sorted(by_step)
            out[tag] = Series(
                steps, [by_step[s][0] for s in steps], [float(by_step[s][1]) for s in steps]
            )
        return out

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config LightningCLI saved (empty when there is none)."""
        import yaml

        path = self.dir / "config.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else {}

    @property
    def module(self) -> str:
        """The LightningModule's class name (``SFTModule``, ``GRPOModule``, …) or ``?``."""
        return str(self.config.get("model", {}).get("class_path", "?")).rsplit(".", 1)[-1]

    @property
    def validation_set(self) -> tuple[Any, ...]:
        """What the run validated on: (source, split, limit, template, seed for synthetic tasks)."""
        init = self.config.get("data", {}).get("init_args", {}) or {}
        source = init.get("val_source")
        seed = init.get("seed", 0) if str(source).startswith("synthetic:") else None
        return (
            source,
            init.get("val_split", "test"),
            init.get("val_limit"),
            init.get("template"),
            seed,
        )

    @property
    def datamodule(self) -> str:
        """The DataModule's class name (``SFTDataModule``, ``RolloutDataModule``, …) or ``?``."""
        return str(self.config.get("data", {}).get("class_path", "?")).rsplit(".", 1)[-1]

    def init_arg(self, section: str, key: str) -> Any:
        return (self.config.get(section, {}).get("init_args") or {}).get(key)

    @property
    def steps(self) -> int:
        return max((s.steps[-1] for s in self.scalars.values() if len(s)), default=0)

    @property
    def wall_seconds(self) -> float:
        return max((s.seconds[-1] for s in self.scalars.values() if len(s)), default=0.0)

    @cached_property
    def parameters(self) -> int | None:
        """Parameters of the trained model: its exported ``hf_model``, else the config's model
        (built on the meta device; nothing is downloaded beyond its config)."""
        exported = self.dir / "hf_model"
        name = (
            str(exported)
            if (exported / "config.json").exists()
            else self.init_arg("model", "model_name_or_path")
        )
        if not name:
            return None
        try:
            return _count_parameters(str(name))
        except Exception as err:  # offline hub id, unknown architecture: the report goes on
            log.warning("%s: cannot count the parameters of %s (%s)", self.name, name, err)
            return None

    @cached_property
    def train_examples(self) -> int | None:
        """An SFT run's training examples: its ``limit``, else the rows of its training file."""
        limit = self.init_arg("data", "limit")
        if limit:
            return int(limit)
        source = str(self.init_arg("data", "train_source") or "")
        if source.startswith("synthetic:"):
            return int(self.init_arg("data", "synthetic_size") or 1024)
        path = Path(source)
        if path.is_file():
            with path.open("rb") as f:
                return sum(1 for line in f if line.strip())
        return None


def _count_parameters(name: str) -> int:
    import torch

    if name.startswith("tiny"):
        from lit_align.models import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer(name)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied embedding counts once


def _has_events(path: Path) -> bool:
    return any(path.glob("events.out.tfevents*"))


def find_runs(paths: list[str | Path]) -> list[Run]:
    """The runs under each path: a sweep directory's points (in manifest order), a run
    directory, or every run directory found below a folder.

    Raises:
        FileNotFoundError: for a path that does not exist or holds no TensorBoard events.
    """
    runs: list[Run] = []
    for given in map(Path, paths):
        if not given.exists():
            raise FileNotFoundError(f"{given} does not exist")
        manifest = given / "manifest.json"
        if manifest.exists():
            for point in json.loads(manifest.read_text())["points"]:
                run_dir = given / point["dir"] / "version_0"
                if _has_events(run_dir):
                    runs.append(Run(point["name"], run_dir, point.get("overrides", {})))
                else:
                    log.warning(
                        "sweep point %s has no events yet (%s); left out", point["name"], run_dir
                    )
            continue
        found = (
            [given]
            if _has_events(given)
            else sorted({p.parent for p in given.rglob("events.out.tfevents*")})
        )
        if not found:
            raise FileNotFoundError(
                f"{given} holds no TensorBoard event files (events.out.tfevents*): give a run "
                "directory (runs/NAME/version_N), a folder of runs, or a sweep directory"
            )
        for run_dir in found:
            # runs/NAME/version_0 given as runs/NAME, runs or itself: labelled NAME/… (a
            # version_0 folder adds nothing to a label; later versions are kept)
            parts = [given.name, *run_dir.relative_to(given).parts]
            if parts[-1] == "version_0" and len(parts) > 1:
                parts.pop()
            label = "/".join(parts[1:] if len(parts) > 1 and len(found) > 1 else parts[-1:])
            runs.append(Run(label, run_dir))
    return runs
