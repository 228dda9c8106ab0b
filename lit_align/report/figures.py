"""Figures of runs (matplotlib, headless: ``Figure`` objects, no pyplot state).

Colours are the Okabe–Ito palette (distinct for colour-blind readers) and every line also has
its own dash pattern and marker, so figures stay readable in greyscale print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure

from lit_align.metrics import (
    CLIP_FRAC,
    GRAD_NORM,
    KL,
    KL_TO_ROLLOUT,
    LOSS,
    LOSS_STEP,
    PG_LOSS,
    REWARD,
    ROLLOUT_ACCURACY,
    ROLLOUT_ENTROPY,
    ROLLOUT_LENGTH,
    TOKEN_ENTROPY,
    VAL_ENTROPY,
    VAL_LENGTH,
)
from lit_align.report.runs import ACCURACY, Run, Series

__all__ = [
    "PANELS",
    "compare_figure",
    "curves_figure",
    "metric_label",
    "scaling_figure",
    "sft_vs_rl_figure",
    "smooth",
]

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
DASHES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

_COMPONENTS = {"correctness", "integer_answer", "strict_format", "soft_format", "xml_count"}


def _reward_tags(tags: Sequence[str]) -> list[str]:
    parts = [
        t
        for t in tags
        if t.startswith("rollout/")
        and (t.endswith("_reward") or t.removeprefix("rollout/") in _COMPONENTS)
    ]
    return [t for t in (REWARD,) if t in tags] + sorted(parts)


def _fixed(*names: str) -> Callable[[Sequence[str]], list[str]]:
    return lambda tags: [n for n in names if n in tags]


# The panels of a run's training curves: (title, y label, which tags it draws).
PANELS: list[tuple[str, str, Callable[[Sequence[str]], list[str]]]] = [
    ("Loss", "loss", _fixed(LOSS, LOSS_STEP, PG_LOSS)),
    ("Reward", "mean reward", _reward_tags),
    ("Accuracy", "accuracy", _fixed(ACCURACY, ROLLOUT_ACCURACY)),
    ("KL", "nats/token", _fixed(KL, KL_TO_ROLLOUT)),
    (
        "Entropy",
        "nats/token",
        _fixed(TOKEN_ENTROPY, ROLLOUT_ENTROPY, VAL_ENTROPY),
    ),
    ("Response length", "tokens", _fixed(ROLLOUT_LENGTH, VAL_LENGTH)),
    ("Gradient norm", "L2 norm", _fixed(GRAD_NORM)),
    ("Clip fraction", "fraction", _fixed(CLIP_FRAC)),
]

# Panels that are flat at 0 in an on-policy run (one optimizer step per round: the policy is the
# one that sampled the round, so the ratio is 1), which looks broken unless said.
ZERO_ON_POLICY = {
    "KL": "0 at every step: on-policy (one optimizer\nstep per round), the policy is the one that\n"
    "sampled the round; KL to a reference needs kl_coef > 0",
    "Clip fraction": "0 at every step: on-policy (one optimizer\nstep per round), the ratio is 1",
}

_LABELS = {
    ACCURACY: "validation accuracy",
    ROLLOUT_ACCURACY: "samples' accuracy",
    REWARD: "reward (total)",
    LOSS_STEP: LOSS,
}


def metric_label(tag: str) -> str:
    """A reader's name for a tag (the tag itself where there is none)."""
    return _LABELS.get(tag, tag)


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    if not weight:
        return list(values)
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def _style(i: int) -> dict[str, Any]:
    return {
        "color": PALETTE[i % len(PALETTE)],
        "linestyle": DASHES[i % len(DASHES)],
        "marker": MARKERS[i % len(MARKERS)],
        "markersize": 3,
        "linewidth": 1.6,
    }


def _x(series: Series, x: str) -> list[float]:
    return list(series.steps) if x == "step" else [s / 60 for s in series.seconds]


def _xlabel(x: str) -> str:
    return "optimizer step" if x == "step" else "wall-clock time (min)"


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return -(-n // cols), cols


def curves_figure(run: Run) -> Figure | None:
    """One run's training curves, a panel per quantity it logged (None: nothing to draw)."""
    tags = list(run.scalars)
    panels = [(t, y, chosen) for t, y, pick in PANELS if (chosen := pick(tags))]
    if not panels:
        return None
    rows, cols = _grid(len(panels))
    fig = Figure(figsize=(4.2 * cols, 3.1 * rows), layout="constrained")
    fig.suptitle(f"Training curves: {run.name}")
    for k, (title, ylabel, chosen) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, tag in enumerate(chosen):
            series = run.scalars[tag]
            ax.plot(series.steps, series.values, label=metric_label(tag), **_style(i))
        if title in ZERO_ON_POLICY and all(
            abs(v) < 1e-12 for tag in chosen for v in run.scalars[tag].values
        ):
            ax.text(0.5, 0.5, ZERO_ON_POLICY[title], ha="center", va="center", fontsize=7,
                    transform=ax.transAxes)  # fmt: skip
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(chosen) > 1:
            ax.legend(fontsize=7)
    return fig


def compare_figure(
    runs: Sequence[Run], metrics: Sequence[str], x: str = "step", weight: float = 0.0
) -> Figure:
    """Runs overlaid, a panel per metric; x is ``step`` or ``time``; ``weight`` smooths (EMA)."""
    rows, cols = _grid(len(metrics))
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    for k, tag in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run in enumerate(runs):
            series = run.scalars.get(tag)
            if series is None or not len(series):
                continue
            ax.plot(_x(series, x), smooth(series.values, weight), label=run.name, **_style(i))
        ax.set_title(metric_label(tag) + (f" (smoothed {weight})" if weight else ""))
        ax.set_xlabel(_xlabel(x))
        ax.set_ylabel(tag)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def scaling_figure(points: Sequence[tuple[Run, int, float]]) -> Figure:
    """Left: final validation accuracy vs parameters (log x). Right: accuracy vs step per size.

    Args:
        points: (run, parameters, final accuracy), smallest model first.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot(
        [p for _, p, _ in points], [a for _, _, a in points], **{**_style(0), "markersize": 6}
    )
    for run, params, acc in points:
        left.annotate(
            run.name, (params, acc), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    _log_x_axes(left, "parameters (log scale)", "Final accuracy vs model size")
    labelled = [(run, f"{run.name} ({_short(params)})") for run, params, _ in points]
    _accuracy_by_step(right, labelled, 0, "optimizer step", "Accuracy vs step, per size")
    return fig


def sft_vs_rl_figure(
    sft: Sequence[tuple[Run, int, float]], rl: Sequence[Run], matches: Sequence[float | None]
) -> Figure:
    """Left: SFT accuracy vs training examples. Right: GRPO accuracy vs step, with the SFT
    accuracies as dotted lines and the steps at which GRPO first reaches each.

    Args:
        sft: (run, examples, final accuracy), fewest examples first.
        rl: the RL runs.
        matches: for each SFT point, the first step of ``rl[0]`` reaching its accuracy.
    """
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.plot([n for _, n, _ in sft], [a for _, _, a in sft], **{**_style(0), "markersize": 6})
    _log_x_axes(left, "SFT training examples (log scale)", "SFT: accuracy vs examples")
    _accuracy_by_step(
        right, [(run, run.name) for run in rl], 1, "GRPO optimizer step", "RL: accuracy vs step"
    )
    for (_, n, acc), step in zip(sft, matches, strict=True):
        right.axhline(acc, color="0.5", linestyle=":", linewidth=1)
        text = f"SFT {n} ex." + (f" = step {step:.0f}" if step is not None else " (not reached)")
        right.annotate(text, (0, acc), xycoords=("axes fraction", "data"), fontsize=7,
                       xytext=(2, 2), textcoords="offset points")  # fmt: skip
    return fig


def _log_x_axes(ax: Any, xlabel: str, title: str) -> None:
    """Final accuracy against a log-scaled x (parameters, examples)."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")


def _accuracy_by_step(
    ax: Any, runs: Sequence[tuple[Run, str]], first_style: int, xlabel: str, title: str
) -> None:
    """Each run's validation accuracy against the optimizer step, labelled."""
    for i, (run, label) in enumerate(runs):
        series = run.scalars[ACCURACY]
        ax.plot(series.steps, series.values, label=label, **_style(first_style + i))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _short(params: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if params >= size:
            return f"{params / size:.3g}{unit}"
    return str(params)
