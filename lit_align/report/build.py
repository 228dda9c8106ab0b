"""``lit_align report RUN_OR_SWEEP_DIR...``: figures (PNG and PDF) and ``report.md`` from runs.

Kinds (``--kind``; by default every kind the runs allow):

- ``curves``: each run's training curves (loss, reward and its components, accuracy, KL,
  entropy, response length, gradient norm, clip fraction), one page per run in
  ``training_plots.pdf`` and a PNG each;
- ``compare``: runs overlaid on chosen metrics, against step and wall-clock time, optionally
  smoothed (two or more runs);
- ``scaling``: final validation accuracy vs parameter count (log x) and accuracy vs step per
  size, with a written summary (runs of two or more sizes);
- ``sft_vs_rl``: SFT accuracy vs training examples beside GRPO accuracy vs step, and the number
  of GRPO steps that reach each SFT run's accuracy, per example (SFT and GRPO runs together).
"""

from __future__ import annotations

import itertools
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_align.metrics import (
    GRAD_NORM,
    LOSS,
    REWARD,
    ROLLOUT_ENTROPY,
    ROLLOUT_LENGTH,
    TOKEN_ENTROPY,
    response_text,
)
from lit_align.report.figures import (
    compare_figure,
    curves_figure,
    metric_label,
    scaling_figure,
    sft_vs_rl_figure,
)
from lit_align.report.runs import ACCURACY, Run, Series, find_runs

log = logging.getLogger(__name__)

__all__ = ["KINDS", "Report", "first_reach", "run_report"]

Kind = Literal["curves", "compare", "scaling", "sft_vs_rl"]
KINDS: tuple[str, ...] = ("curves", "compare", "scaling", "sft_vs_rl")
COMPARE_DEFAULT = (
    ACCURACY,
    REWARD,
    LOSS,
    ROLLOUT_ENTROPY,
    TOKEN_ENTROPY,
    ROLLOUT_LENGTH,
    GRAD_NORM,
)


@dataclass
class Report:
    """What a report wrote: its runs, figures (by file stem), table rows and markdown."""

    output: Path
    runs: list[Run]
    figures: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def first_reach(series: Series, target: float) -> float | None:
    """The first step at which ``series`` reaches ``target``, linear between logged points."""
    if not len(series):
        return None
    if series.values[0] >= target:
        return float(series.steps[0])
    points = list(zip(series.steps, series.values, strict=True))
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if v0 < target <= v1:
            return s0 + (target - v0) / (v1 - v0) * (s1 - s0)
    return None


def _row(run: Run) -> dict[str, Any]:
    acc = run.scalars.get(ACCURACY)
    row: dict[str, Any] = {
        "run": run.name,
        "module": run.module,
        "parameters": run.parameters,
        "steps": run.steps,
        "wall_min": run.wall_seconds / 60,
    }
    if acc is not None and len(acc):
        best = max(range(len(acc)), key=lambda i: (acc.values[i], -i))
        row.update(
            final_accuracy=acc.values[-1],
            best_accuracy=acc.values[best],
            best_step=acc.steps[best],
            best_min=acc.seconds[best] / 60,
        )
    return row


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 0.1 else f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _save(report: Report, stem: str, fig: Any) -> str:
    fig.savefig(report.output / f"{stem}.png", dpi=130)
    fig.savefig(report.output / f"{stem}.pdf")
    report.figures[stem] = fig
    return f"![{stem}]({stem}.png)"


def _curves(report: Report) -> None:
    from matplotlib.backends.backend_pdf import PdfPages

    lines = ["## Training curves", "", "All runs, one page each: `training_plots.pdf`.", ""]
    with PdfPages(report.output / "training_plots.pdf") as pdf:
        for i, run in enumerate(report.runs):
            fig = curves_figure(run)
            if fig is None:
                continue
            stem = f"curves_{i:02d}"
            fig.savefig(report.output / f"{stem}.png", dpi=110)
            pdf.savefig(fig)
            report.figures[stem] = fig
            lines += [f"### {run.name}", "", f"![{run.name}]({stem}.png)", ""]
    report.sections.append("\n".join(lines))


def _compare(report: Report, metrics: list[str] | None, x: str, weight: float) -> None:
    present = {t for run in report.runs for t in run.scalars}
    chosen = metrics or [m for m in COMPARE_DEFAULT if m in present]
    missing = [m for m in chosen if m not in present]
    if missing:
        raise ValueError(
            f"--metrics {missing} are logged by none of the runs; they log: {sorted(present)}"
        )
    lines = ["## Comparison", ""]
    for axis in ("step", "time") if x == "both" else (x,):
        stem = f"compare_{axis}"
        lines += [_save(report, stem, compare_figure(report.runs, chosen, axis, weight)), ""]
    report.sections.append("\n".join(lines))


def _scaling(report: Report) -> None:
    sized = [
        (run, run.parameters, run.scalars[ACCURACY].values[-1])
        for run in report.runs
        if run.parameters and ACCURACY in run.scalars
    ]
    sized.sort(key=lambda p: p[1])
    if len({p for _, p, _ in sized}) < 2:
        raise ValueError("scaling needs runs of two or more model sizes that log val/accuracy")
    small, large = sized[0], sized[-1]
    ratio = large[1] / small[1]
    summary = (
        f"Final validation accuracy goes from {small[2]:.3f} ({small[0].name}, {small[1]:,} "
        f"parameters) to {large[2]:.3f} ({large[0].name}, {large[1]:,}): "
        f"{large[2] - small[2]:+.3f} for {ratio:.1f}× the parameters."
    )
    monotone = all(b[2] >= a[2] for a, b in itertools.pairwise(sized))
    summary += (
        " Accuracy rises with every size step."
        if monotone and len(sized) > 2
        else ""
        if monotone
        else " It is not monotone in size: see the table (seeds and step counts matter)."
    )
    rows = [
        {"run": r.name, "parameters": p, "final_accuracy": a, "steps": r.steps} for r, p, a in sized
    ]
    table = _table(rows, [("run", "run"), ("parameters", "parameters"), ("steps", "steps"),
                          ("final_accuracy", "final val accuracy")])  # fmt: skip
    figure = _save(report, "scaling", scaling_figure(sized))
    report.sections.append("\n".join(["## Scaling", "", summary, "", table, "", figure, ""]))


def _sft_vs_rl(report: Report) -> None:
    sft = sorted(
        (
            (run, run.train_examples, run.scalars[ACCURACY].values[-1])
            for run in report.runs
            if run.datamodule == "SFTDataModule" and run.train_examples and ACCURACY in run.scalars
        ),
        key=lambda p: p[1],
    )
    rl = [r for r in report.runs if r.module == "GRPOModule" and ACCURACY in r.scalars]
    if not sft or not rl:
        raise ValueError("sft_vs_rl needs SFT runs and GRPO runs that log val/accuracy")
    curve = rl[0].scalars[ACCURACY]
    matches = [first_reach(curve, acc) for _, _, acc in sft]
    rows = [
        {
            "run": run.name,
            "examples": n,
            "final_accuracy": acc,
            "grpo_step": step,
            "steps_per_example": None if step is None else step / n,
        }
        for (run, n, acc), step in zip(sft, matches, strict=True)
    ]
    ratios = [r["steps_per_example"] for r in rows if r["steps_per_example"] is not None]
    estimate = (
        f"One SFT example is worth about **{statistics.median(ratios):.3g} GRPO steps** (median "
        f"over {len(ratios)} SFT runs)."
        if ratios
        else f"{rl[0].name} reaches none of the SFT accuracies: no estimate."
    )
    method = (
        f"How: for each SFT run, its final validation accuracy is matched on the validation curve "
        f"of {rl[0].name} (the first step at which GRPO reaches it, linear between validation "
        "points; step 0 when GRPO starts above it); that step divided by the SFT run's number of "
        "training examples is its steps-per-example. Both must be validated on the same set."
    )
    table = _table(rows, [("run", "SFT run"), ("examples", "examples"),
                          ("final_accuracy", "final val accuracy"), ("grpo_step", "GRPO step reaching it"),
                          ("steps_per_example", "GRPO steps per example")])  # fmt: skip
    figure = _save(report, "sft_vs_rl", sft_vs_rl_figure(sft, rl, matches))
    differ = [run.name for run, _, _ in sft if run.validation_set != rl[0].validation_set]
    warning = (
        f"**Warning: not comparable.** {', '.join(differ)} validated on another set than "
        f"{rl[0].name} (source, split, limit, template or seed differ: "
        f"{rl[0].validation_set} vs {sft[0][0].validation_set}); rerun with the same "
        "data.init_args.val_source, val_limit and template."
        if differ
        else ""
    )
    if warning:
        log.warning(warning.replace("**", ""))
    report.sections.append(
        "\n".join(
            ["## SFT vs RL", "", warning, "", estimate, "", method, "", table, "", figure, ""]
        )
    )


def _cell(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "…" if len(text) > limit else text).replace("|", "\\|")


def _samples(report: Report, per_round: int = 2) -> None:
    """Early vs late samples of runs that wrote ``samples.jsonl`` (GenerationSamples)."""
    import json

    lines = []
    for run in report.runs:
        path = run.dir / "samples.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]
        rounds = sorted({r["round"] for r in rows})
        if len(rounds) < 2:
            continue
        early = [r for r in rows if r["round"] == rounds[0]][:per_round]
        late = [r for r in rows if r["round"] == rounds[-1]][:per_round]
        lines += [
            f"### {run.name}",
            "",
            f"| early (round {rounds[0]}) | late (round {rounds[-1]}) |",
            "|---|---|",
            *(
                f"| {_cell(response_text(a))} (reward {a.get('reward', 0):.2f}) | "
                f"{_cell(response_text(b))} (reward {b.get('reward', 0):.2f}) |"
                for a, b in zip(early, late, strict=False)
            ),
            "",
        ]
    if lines:
        report.sections.append("\n".join(["## Samples, early and late", "", *lines]))


def _auto_kinds(runs: list[Run]) -> list[str]:
    kinds = ["curves"]
    if len(runs) > 1:
        kinds.append("compare")
    sizes = {r.parameters for r in runs if ACCURACY in r.scalars and r.parameters}
    if len(sizes) > 1 and len({r.module for r in runs}) == 1:
        kinds.append("scaling")
    modules = {r.module for r in runs}
    if "GRPOModule" in modules and any(r.datamodule == "SFTDataModule" for r in runs):
        kinds.append("sft_vs_rl")
    return kinds


def run_report(
    paths: list[str | Path],
    kinds: list[str] | None = None,
    x: Literal["step", "time", "both"] = "both",
    metrics: list[str] | None = None,
    smooth: float = 0.0,
    output: str | Path | None = None,
) -> Report:
    """Read runs and write figures and ``report.md``.

    Args:
        paths: run directories, folders of runs, or sweep directories.
        kinds: figure kinds (default: all the runs allow; see the module docstring).
        x: the comparison's x axis: ``step``, ``time`` (wall-clock) or ``both``.
        metrics: the comparison's metrics (TensorBoard tags); default: validation accuracy,
            reward, loss, entropy, response length and gradient norm, where logged.
        smooth: exponential smoothing weight of the comparison, in [0, 1).
        output: where to write (default: ``PATH/report`` for one path, else ``./report``).
    """
    if not 0 <= smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    runs = find_runs(paths)
    chosen = kinds or _auto_kinds(runs)
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; accepted values: {', '.join(KINDS)}")
    out = (
        Path(output)
        if output
        else (Path(paths[0]) / "report" if len(paths) == 1 else Path("report"))
    )
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, runs, rows=[_row(r) for r in runs])
    makers = {
        "curves": lambda: _curves(report),
        "compare": lambda: _compare(report, metrics, x, smooth),
        "scaling": lambda: _scaling(report),
        "sft_vs_rl": lambda: _sft_vs_rl(report),
    }
    for kind in chosen:
        makers[kind]()
    _samples(report)
    columns = [("run", "run"), ("module", "module"), ("parameters", "parameters"), ("steps", "steps"),
               ("wall_min", "wall (min)"), ("final_accuracy", "final val accuracy"),
               ("best_accuracy", "best val accuracy"), ("best_step", "step of best"),
               ("best_min", "min to best")]  # fmt: skip
    text = [
        f"# Report: {', '.join(str(p) for p in paths)}",
        "",
        f"{len(runs)} runs. Accuracy is `{ACCURACY}` ({metric_label(ACCURACY)}); times are "
        "wall-clock from each run's first logged event.",
        "",
        _table(report.rows, columns),
        "",
        *report.sections,
    ]
    (out / "report.md").write_text("\n".join(text))
    return report
