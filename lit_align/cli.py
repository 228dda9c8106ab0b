"""The ``lit_align`` command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lit_align`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if args in ([], ["-h"], ["--help"]):
        print(
            "usage: lit_align {--version}\n\nTraining commands arrive with the SFT and GRPO modules."
        )
        return 0
    if args == ["--version"]:
        from lit_align import __version__

        print(__version__)
        return 0
    print(
        f"lit_align: unknown arguments {' '.join(args)!r}; see `lit_align --help`", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
