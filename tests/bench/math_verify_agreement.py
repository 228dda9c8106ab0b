"""How often lit_align's ``grade(pred, gold)`` agrees with math-verify on math-verify's own suite.

Runs the ``tests/`` of the math-verify source distribution (fetched from the package index with
``pip download`` unless a path is given) with its ``compare_strings`` helper wrapped: every call
records math-verify's verdict and ours on the same (gold, pred). Prints the agreement and each
disagreement; ``--json FILE`` writes them.

    python tests/bench/math_verify_agreement.py [--sdist-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.9.0"
RECORDS: list[dict] = []


class _Plugin:
    """Swaps math-verify's test helper for one that asks both graders before any test imports it."""

    def pytest_configure(self, config) -> None:
        # The suite's test_all is imported as `tests.test_all` by its sibling files and as
        # `test_all` by pytest itself: wrap the helper in both modules before collection.
        import test_all
        import tests.test_all as suite

        from lit_align.rewards import grade

        original = suite.compare_strings

        def both(gold, pred, *args, **kwargs):
            theirs = bool(original(gold, pred, *args, **kwargs))
            ours = bool(grade(pred, gold))
            options = {k: v for k, v in kwargs.items() if k != "match_types"}
            RECORDS.append(
                {"gold": gold, "pred": pred, "math_verify": theirs, "lit_align": ours,
                 "options": {**dict(zip(("match_types", "precision", "strict"), args, strict=False)), **options}}
            )  # fmt: skip
            return theirs  # the suite's own assertions keep checking math-verify

        suite.compare_strings = test_all.compare_strings = both


def fetch_sdist(dest: Path) -> Path:
    """The unpacked math-verify sdist under ``dest`` (downloaded from the package index)."""
    root = dest / f"math_verify-{VERSION}"
    if root.is_dir():
        return root
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         f"math-verify=={VERSION}", "-d", str(dest)],
        check=True,
    )  # fmt: skip
    with tarfile.open(dest / f"math_verify-{VERSION}.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    return root


def run(sdist: Path) -> list[dict]:
    """Run the suite's compare_strings tests; returns one record per compare."""
    import pytest

    RECORDS.clear()
    sys.path[:0] = [str(sdist), str(sdist / "tests")]
    try:
        pytest.main(
            ["-q", "-p", "no:cacheprovider", "--no-header", "--tb=no", "-o", "addopts=",
             "--rootdir", str(sdist), str(sdist / "tests")],
            plugins=[_Plugin()],
        )  # fmt: skip
    finally:
        sys.path.remove(str(sdist))
        sys.path.remove(str(sdist / "tests"))
    return list(RECORDS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dest = args.sdist_dir or Path(tempfile.mkdtemp())
    records = run(fetch_sdist(dest))
    agree = sum(r["math_verify"] == r["lit_align"] for r in records)
    for r in records:
        if r["math_verify"] != r["lit_align"]:
            print(f"differ: gold={r['gold']!r} pred={r['pred'][:120]!r} "
                  f"math_verify={r['math_verify']} lit_align={r['lit_align']}")  # fmt: skip
    print(f"agreement: {agree}/{len(records)} = {agree / max(len(records), 1):.3f}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
