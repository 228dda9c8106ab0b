"""``lit_align fit|validate|test``: LightningCLI in subclass mode over lit_align's modules.

Everything that can be checked before a run directory exists is checked here, in this order:
the command line and config files (jsonargparse; errors raised, not printed with the usage), the
checkpoint file of ``--ckpt_path``, the main config's DataModule (its constructor checks and its
data files) when a warm start has to run first, then the warm start, the classes, and the
DataModule's preflight (trainer settings, data) before Lightning's logger writes anything.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

import lit_align.data
import lit_align.modules  # noqa: F401  (registered, so `--model GRPOModule` and `--model.help GRPOModule` resolve)
from lit_align.callbacks.progress import ProgressLog
from lit_align.checkpoints import RESERVED_CKPT_PATHS, check_checkpoint
from lit_align.threads import apply_threads

__all__ = ["LitAlignCLI"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class LitAlignCLI(LightningCLI):
    """LightningCLI in subclass mode over lit_align's modules (SFTModule, GRPOModule) and
    DataModules; the resolved config is saved in each run directory.

    Top-level options besides Lightning's: ``warm_start`` (another config fitted first when its
    output is missing: the GRPO demo starts from a short SFT run), ``threads`` (torch's CPU
    threads) and ``progress_every_n_steps`` (SFT's plain progress lines).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Parse errors are raised (cli.main prints them in one line) instead of the usage text.
        no_exit = {"exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {**no_exit, **{s: dict(no_exit) for s in _SUBCOMMANDS}})
        # A progress bar is for a terminal; a file log gets ProgressLog's lines instead.
        kwargs.setdefault("trainer_defaults", {"enable_progress_bar": sys.stderr.isatty()})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        from jsonargparse.typing import Path_fr

        parser.add_argument(
            "--warm_start.config",
            type=Path_fr | None,
            default=None,
            help="a config to fit first when warm_start.output does not exist (e.g. a short SFT "
            "run); relative to the config file that names it",
        )
        parser.add_argument(
            "--warm_start.output",
            type=str | None,
            default=None,
            help="the directory that warm_start.config produces (an HF model to start from)",
        )
        parser.add_argument(
            "--warm_start.args",
            type=list[str],
            default=[],
            help="extra command-line arguments for the warm-start run",
        )
        parser.add_argument(
            "--threads",
            type=int | Literal["auto"],
            default="auto",
            help="torch's CPU threads (intra-op): auto = the cores this process may use "
            "(os.sched_getaffinity) less those other processes keep busy at start-up, at least 1; "
            "a number to share the machine with other jobs",
        )
        parser.add_argument(
            "--progress_every_n_steps",
            type=int,
            default=50,
            help="optimizer steps between plain progress lines when there are no rounds (SFT); "
            "rollout DataModules print one line per round",
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        import argparse

        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            err.accepted_keys = _option_keys(self._subcommand_parsers.values())  # "did you mean"
            raise

    # ------------------------------------------------------------------ before the classes

    def _sub_config(self) -> Any:
        return self.config.get(self.subcommand, self.config) if self.subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the checkpoint's hyperparameters here, before anything else: a missing,
        # truncated or foreign file is refused first, in one line, naming the file.
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        resolved_later = str(path) in RESERVED_CKPT_PATHS or str(path).startswith("registry:")
        if path and not resolved_later and "://" not in str(path):  # remote files: Lightning's
            check_checkpoint(path, weights_only=self.config[sub].get("weights_only") is not False)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self._sub_config()
        apply_threads(config.get("threads", "auto"))
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            self._continue_last_run(config)
        _absolute_paths(config)

    def instantiate_classes(self) -> None:
        config = self._sub_config()
        if _pending_warm_start(config):
            self._check_data(config)  # a bad main config fails before a long warm start
            _run_warm_start(config)
        super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(c, ProgressLog) for c in trainer.callbacks):  # one set of lines
            every = self._sub_config().get("progress_every_n_steps", 50)
            trainer.callbacks.append(ProgressLog(every))
        return trainer

    def _check_data(self, config: Any) -> None:
        """Build the main config's DataModule (its constructor checks the sizes) and load its data,
        without the model (the warm start has not made it yet)."""
        probe = config.clone()
        probe["model"] = None
        parser = self._parser(self.subcommand)
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
        data = instantiate(probe).get("data")
        preflight = getattr(data, "preflight", None)
        if callable(preflight):
            preflight(None)
        _check_model_blocks(config.get("model"))

    def _preflight(self) -> None:
        # Bad settings and bad data fail here, before Lightning creates the run directory.
        preflight = getattr(self.datamodule, "preflight", None)
        if callable(preflight):
            preflight(self.trainer)

    def before_fit(self) -> None:
        self._preflight()

    def before_validate(self) -> None:
        self._preflight()

    def _continue_last_run(self, config: Any) -> None:
        """``--ckpt_path last``: continue the newest run of this config, in its own directory.

        Lightning alone would look for ``last.ckpt`` in a new ``version_N`` and, finding none,
        train from scratch. Here the newest ``version_N`` with ``checkpoints/last.ckpt`` is
        reused (logs continue in it) and its checkpoint restored; with none, the run refuses.
        """
        logger = config.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or init.get("save_dir") is None:
            raise ValueError(
                "--ckpt_path last needs a logger with save_dir and name (trainer.logger) to find "
                "the run to continue; or pass a checkpoint file"
            )
        root = Path(init["save_dir"]) / (init.get("name") or "lightning_logs")
        found = sorted(
            (int(d.name.removeprefix("version_")), d)
            for d in root.glob("version_*")
            if d.name.removeprefix("version_").isdigit() and (d / "checkpoints/last.ckpt").exists()
        )
        if not found:
            raise ValueError(
                f"--ckpt_path last: no run to continue: no {root}/version_*/checkpoints/"
                "last.ckpt. Start a new run without --ckpt_path, or keep ModelCheckpoint("
                "save_last: true) in trainer.callbacks (lit_align's configs do)."
            )
        version, run = found[-1]
        init["version"] = version
        config["ckpt_path"] = str((run / "checkpoints" / "last.ckpt").resolve())
        check_checkpoint(config["ckpt_path"], weights_only=config.get("weights_only") is not False)
        self.save_config_kwargs["overwrite"] = True  # the same run's config.yaml, now resumed
        print(f"lit_align: continuing {run} from {config['ckpt_path']}", flush=True)


def _option_keys(parsers: Any) -> list[str]:
    """Every ``--a.b`` option of the subcommands' parsers, as ``a.b``."""
    keys = {
        option.lstrip("-")
        for parser in parsers
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    return sorted(keys)


def _absolute_paths(config: Any) -> None:
    """Make the run's paths absolute, so its saved config.yaml reruns from any directory: the
    output folders, the warm start's output, and a model or data path that exists here."""
    trainer = config.get("trainer") or {}
    warm = config.get("warm_start") or {}
    if warm.get("config"):
        from jsonargparse.typing import Path_fr

        # It was relative to the config file that named it.
        warm["config"] = Path_fr(warm["config"].absolute)
    outputs = {str(warm["output"])} if warm.get("output") else set()
    if warm.get("output"):
        warm["output"] = str(Path(warm["output"]).absolute())
    if trainer.get("default_root_dir"):
        trainer["default_root_dir"] = str(Path(trainer["default_root_dir"]).absolute())
    logger = trainer.get("logger")
    for init in [getattr(one, "init_args", None) for one in _as_list(logger)]:
        if init is not None and isinstance(init.get("save_dir"), str):
            init["save_dir"] = str(Path(init["save_dir"]).absolute())
    for section, keys in (
        ("model", ("model_name_or_path",)),
        ("data", ("train_source", "val_source")),
    ):
        init = getattr(config.get(section), "init_args", None)
        for key in keys if init is not None else ():
            value = init.get(key)
            if isinstance(value, str) and (value in outputs or Path(value).exists()):
                init[key] = str(Path(value).absolute())


def _check_model_blocks(model: Any) -> None:
    """Build the model's typed blocks (``loss``, ``val_sampling``…), whose constructors validate
    them, without building the model itself (which a pending warm start has not made yet)."""
    import dataclasses
    import importlib
    import inspect
    import typing

    if not model or not model.get("class_path"):
        return
    module_name, _, name = model["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    hints: dict[str, Any] = {}
    for klass in reversed(inspect.getmro(cls)):
        if "__init__" in klass.__dict__:
            hints.update(typing.get_type_hints(klass.__dict__["__init__"]))
    for key, value in vars(model.get("init_args") or Namespace()).items():
        kind = hints.get(key)
        kinds = [kind, *typing.get_args(kind)]  # X or X | None
        block = next((k for k in kinds if dataclasses.is_dataclass(k)), None)
        if block is not None and hasattr(value, "as_dict"):
            block(**value.as_dict())


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list) else [value]


def _pending_warm_start(config: Any) -> bool:
    warm = config.get("warm_start")
    return (
        bool(warm and warm.get("config") and warm.get("output"))
        and not Path(warm["output"]).exists()
    )


def _run_warm_start(config: Any) -> None:
    import subprocess

    warm = config["warm_start"]
    warm_config = warm["config"].absolute
    print(
        f"lit_align: {warm['output']} is missing; running the warm start {warm_config} first",
        flush=True,
    )
    command = [sys.executable, "-m", "lit_align.cli", "fit", "--config", warm_config]
    command += ["--threads", str(config.get("threads", "auto")), *warm.get("args", [])]
    done = subprocess.run(command, check=False)
    if done.returncode:
        raise SystemExit(done.returncode)  # the warm start printed its own error
    if not Path(warm["output"]).exists():
        raise FileNotFoundError(f"warm start {warm_config} did not produce {warm['output']}")
