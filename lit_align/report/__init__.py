"""Reports of runs: TensorBoard logs and configs read back (:mod:`~lit_align.report.runs`),
figures (:mod:`~lit_align.report.figures`) and ``report.md`` (:mod:`~lit_align.report.build`)."""

from lit_align.report.build import KINDS, Report, first_reach, run_report
from lit_align.report.runs import Run, Series, find_runs

__all__ = ["KINDS", "Report", "Run", "Series", "find_runs", "first_reach", "run_report"]
