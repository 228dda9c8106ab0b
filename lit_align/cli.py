"""The ``lit_align`` command line.

- ``lit_align fit|validate|test --config X.yaml``: LightningCLI in subclass mode, so one entry
  serves SFT and GRPO; ``--print_config`` documents every option, and the resolved config is
  saved in each run directory.
- ``lit_align eval`` and ``lit_align generate``: functions of :mod:`lit_align.commands` behind
  jsonargparse (evaluation; SFT data from sampled, graded, kept answers).
- ``lit_align sweep`` (:mod:`lit_align.sweep`) and ``lit_align report`` (:mod:`lit_align.report`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from lightning.pytorch.cli import LightningCLI

from lit_align.commands import run_eval, run_generate
from lit_align.rollout.openai_api import APIError

__all__ = ["LitAlignCLI", "main", "run_eval", "run_generate"]


class LitAlignCLI(LightningCLI):
    """LightningCLI in subclass mode over lit_align's modules (SFTModule, GRPOModule) and
    DataModules; the resolved config is saved in each run directory.

    ``warm_start`` runs another config first when its output is missing (the GRPO demo starts
    from a short SFT run that the same command performs).
    """

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

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            self._continue_last_run(config)
        self._warm_start(config)

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
        from pathlib import Path

        logger = config.get("trainer", {}).get("logger")
        init = getattr(logger, "init_args", None)
        if init is None or init.get("save_dir") is None:
            raise SystemExit(
                "lit_align: --ckpt_path last needs a logger with save_dir and name "
                "(trainer.logger) to find the run to continue; or pass a checkpoint file"
            )
        root = Path(init["save_dir"]) / (init.get("name") or "lightning_logs")
        found = sorted(
            (int(d.name.removeprefix("version_")), d)
            for d in root.glob("version_*")
            if d.name.removeprefix("version_").isdigit() and (d / "checkpoints/last.ckpt").exists()
        )
        if not found:
            raise SystemExit(
                f"lit_align: --ckpt_path last: no run to continue: no {root}/version_*/checkpoints/"
                "last.ckpt. Start a new run without --ckpt_path, or keep ModelCheckpoint("
                "save_last: true) in trainer.callbacks (lit_align's configs do)."
            )
        version, run = found[-1]
        init["version"] = version
        config["ckpt_path"] = str((run / "checkpoints" / "last.ckpt").resolve())
        self.save_config_kwargs["overwrite"] = True  # the same run's config.yaml, now resumed
        print(f"lit_align: continuing {run} from {config['ckpt_path']}")

    def _warm_start(self, config: Any) -> None:
        warm = config.get("warm_start")
        if not warm or not warm.get("config") or not warm.get("output"):
            return
        from pathlib import Path

        from jsonargparse.typing import Path_fr

        # Saved absolute, so the run's config.yaml reruns from any working directory (the path
        # was relative to the config file that named it).
        warm["config"] = Path_fr(warm["config"].absolute)
        if Path(warm["output"]).exists():
            return
        warm_config = warm["config"].absolute
        print(f"lit_align: {warm['output']} is missing; running the warm start {warm_config} first")
        import subprocess

        command = [
            sys.executable,
            "-m",
            "lit_align.cli",
            "fit",
            "--config",
            warm_config,
            *warm.get("args", []),
        ]
        subprocess.run(command, check=True)
        if not Path(warm["output"]).exists():
            raise FileNotFoundError(f"warm start {warm_config} did not produce {warm['output']}")


def _version(args: list[str]) -> None:
    from lit_align import __version__

    print(__version__)


def _eval(args: list[str]) -> None:
    from jsonargparse import CLI

    CLI(run_eval, args=args[1:], as_positional=False)


def _generate(args: list[str]) -> None:
    from jsonargparse import CLI

    CLI(run_generate, args=args[1:], as_positional=False)


def _sweep(args: list[str]) -> None:
    import argparse

    from lit_align.sweep import run_sweep

    parser = argparse.ArgumentParser(prog="lit_align sweep", description=_SUBCOMMANDS["sweep"][1])
    parser.add_argument("--config", required=True, help="the sweep file (see lit_align.sweep)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--only", nargs="+", help="run only the points with these names")
    ns = parser.parse_args(args[1:])
    failed = run_sweep(ns.config, dry_run=ns.dry_run, only=ns.only)
    if failed:
        raise SystemExit(1)


def _report(args: list[str]) -> None:
    import argparse

    from lit_align.report import KINDS, run_report

    parser = argparse.ArgumentParser(prog="lit_align report", description=_SUBCOMMANDS["report"][1])
    parser.add_argument(
        "paths", nargs="+", help="run directories, folders of runs, sweep directories"
    )
    parser.add_argument(
        "--kind", nargs="+", choices=KINDS, help="figure kinds (default: all the runs allow)"
    )
    parser.add_argument(
        "--x", choices=("step", "time", "both"), default="both", help="comparison x axis"
    )
    parser.add_argument("--metrics", nargs="+", help="comparison metrics (TensorBoard tags)")
    parser.add_argument("--smooth", type=float, default=0.0, help="comparison EMA weight in [0, 1)")
    parser.add_argument("--output", help="output folder (default: PATH/report for one path)")
    ns = parser.parse_args(args[1:])
    report = run_report(ns.paths, ns.kind, ns.x, ns.metrics, ns.smooth, ns.output)
    print(
        f"{len(report.runs)} runs; wrote {len(report.figures)} figures and {report.output / 'report.md'}"
    )


def _judge_check(args: list[str]) -> None:
    from jsonargparse import CLI

    from lit_align.judge_check import run_judge_check

    CLI(run_judge_check, args=args[1:], as_positional=False)


def _usage(args: list[str]) -> None:
    lines = [f"  {name:<10} {text}" for name, (_, text) in _SUBCOMMANDS.items() if text]
    print(
        "usage: lit_align SUBCOMMAND [options]   (lit_align SUBCOMMAND --help)\n\n"
        + "\n".join(lines)
    )


def _lightning(args: list[str]) -> None:
    # From the console script, LightningCLI reads sys.argv itself (passing the same list as
    # args would make it warn that both were given).
    LitAlignCLI(args=None if args == sys.argv[1:] else args)


# subcommand → (handler, given the whole argument list; one line for the usage text)
_SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "fit": (_lightning, "train: lit_align fit --config CONFIG.yaml [--print_config]"),
    "validate": (_lightning, "validate a model: lit_align validate --config CONFIG.yaml"),
    "test": (_lightning, "test a model: lit_align test --config CONFIG.yaml"),
    "eval": (_eval, "generate + grade: lit_align eval --model MODEL --data DATA [options]"),
    "generate": (
        _generate,
        "sample, grade, keep the correct answers as SFT data: lit_align generate --backend "
        "openai|vllm|hf --model MODEL --data DATA --output OUT.jsonl [options]",
    ),
    "sweep": (_sweep, "a grid of fit runs: lit_align sweep --config SWEEP.yaml [--dry_run]"),
    "report": (_report, "figures + report.md from runs: lit_align report RUN_OR_SWEEP_DIR..."),
    "judge-check": (
        _judge_check,
        "how well a judge separates stories: lit_align judge-check --base_url URL --model M",
    ),
    "--version": (_version, "print the version"),
    "--help": (_usage, ""),
    "-h": (_usage, ""),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit_align`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    name = args[0] if args else "--help"
    if name not in _SUBCOMMANDS:
        _usage(args)
        print(f"\nlit_align: unknown subcommand {name!r}", file=sys.stderr)
        return 2
    handler, _ = _SUBCOMMANDS[name]
    try:
        handler(args)
    except (ValueError, OSError, ImportError, APIError) as err:  # bad input: cause and fix
        if os.environ.get("LIT_ALIGN_DEBUG"):
            raise
        print(
            f"lit_align: error: {err}\n(set LIT_ALIGN_DEBUG=1 for the full traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        close_process_group()
    return 0


def close_process_group() -> None:
    """Destroy a process group Lightning left open, so its gloo/NCCL threads are joined before exit.

    Lightning's strategies never destroy the group; at interpreter exit a still-running communicator
    thread then aborts the process now and then ("terminate called without an active exception",
    exit -6) after a run that finished fine.
    """
    import torch.distributed as dist

    vllm_state = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_state is not None and vllm_state.model_parallel_is_initialized():
        return  # a live vLLM engine uses the group; its own shutdown destroys it at exit
    # Destroying is local (no collective), so it is safe after an error on one rank too.
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
