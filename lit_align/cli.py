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

__all__ = ["main"]


def _version(args: list[str]) -> None:
    from lit_align import __version__

    print(__version__)


def _function_cli(function: Callable[..., Any], args: list[str]) -> None:
    """``lit_align eval|generate|judge-check``: a function's keyword arguments as flags (a
    dataclass argument's fields as ``--block.field``, as in a training config)."""
    import argparse
    import dataclasses
    import typing

    from jsonargparse import CLI

    try:
        CLI(function, args=args[1:], as_positional=False, exit_on_error=False)
    except argparse.ArgumentError as err:
        keys = []
        for name, kind in typing.get_type_hints(function).items():
            keys.append(name)
            if dataclasses.is_dataclass(kind):
                keys += [f"{name}.{f.name}" for f in dataclasses.fields(kind)]
        err.accepted_keys = keys  # for "did you mean"
        raise


def _eval(args: list[str]) -> None:
    from lit_align.commands import run_eval

    _function_cli(run_eval, args)


def _generate(args: list[str]) -> None:
    from lit_align.commands import run_generate

    _function_cli(run_generate, args)


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
    from lit_align.judge_check import run_judge_check

    _function_cli(run_judge_check, args)


def _usage(args: list[str]) -> None:
    lines = [f"  {name:<10} {text}" for name, (_, text) in _SUBCOMMANDS.items() if text]
    print(
        "usage: lit_align SUBCOMMAND [options]   (lit_align SUBCOMMAND --help)\n\n"
        + "\n".join(lines)
    )


def _lightning(args: list[str]) -> None:
    from lit_align.lightning_cli import LitAlignCLI

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
    """Entry point of the ``lit_align`` console script.

    Returns the exit status: 0 done, 1 bad input or a failed run (one line: the key or file, the
    problem, the fix; ``LIT_ALIGN_DEBUG=1`` raises instead), 2 a command line or config file
    that does not parse, 143 stopped by SIGTERM after saving ``last.ckpt`` (128 + 15, what a
    scheduler expects of a terminated job; ``--ckpt_path last`` continues it).
    """
    import argparse

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_align.cli_errors import one_line
    from lit_align.engines.openai_api import APIError

    args = sys.argv[1:] if argv is None else list(argv)
    name = args[0] if args else "--help"
    if name not in _SUBCOMMANDS:
        _usage(args)
        print(f"\nlit_align: unknown subcommand {name!r}", file=sys.stderr)
        return 2
    handler, _ = _SUBCOMMANDS[name]
    debug = bool(os.environ.get("LIT_ALIGN_DEBUG"))
    try:
        handler(args)
    except SIGTERMException:
        print("lit_align: stopped by SIGTERM (exit 143)", file=sys.stderr, flush=True)
        return 143
    except argparse.ArgumentError as err:
        if debug:
            raise
        return _fail(one_line(err), 2)
    except (ValueError, OSError, ImportError, APIError) as err:  # bad input
        if debug:
            raise
        return _fail(one_line(err), 1)
    finally:
        close_process_group()
    return 0


def _fail(message: str, code: int) -> int:
    print(
        f"lit_align: error: {message}\n(set LIT_ALIGN_DEBUG=1 for the full traceback)",
        file=sys.stderr,
    )
    return code


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
