"""``lit_align report``: real TensorBoard event files in, figures whose lines and labels are
checked and a report.md whose numbers are the events' (hand-computed where derived)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_align.cli import main
from lit_align.report import find_runs, first_reach, run_report
from lit_align.report.figures import smooth
from lit_align.report.runs import Series
from tests.figures import figure

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, name: str, module: str, data: str, scalars: dict, **init) -> Path:
    """A run directory as lit_align writes it: events + the resolved config.yaml."""
    from torch.utils.tensorboard import SummaryWriter

    run = root / name / "version_0"
    writer = SummaryWriter(str(run))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step, walltime=1000.0 + 6 * step)  # 6 s per step
    writer.close()
    config = {
        "model": {"class_path": f"lit_align.modules.{module}", "init_args": init.pop("model", {})},
        "data": {"class_path": f"lit_align.data.{data}", "init_args": init},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "runs"
    acc = [(0, 0.2), (10, 0.5), (20, 0.8)]
    _run(root, "grpo", "GRPOModule", "RolloutDataModule",
         {"val/accuracy": acc, "rollout/reward": [(s, 0.1 * s) for s in range(21)],
          "train/loss": [(s, 1.0) for s in range(21)]})  # fmt: skip
    _run(root, "sft_100", "SFTModule", "SFTDataModule",
         {"val/accuracy": [(5, 0.1), (9, 0.35)]}, limit=100)  # fmt: skip
    _run(root, "sft_400", "SFTModule", "SFTDataModule",
         {"val/accuracy": [(20, 0.3), (39, 0.65)]}, limit=400)  # fmt: skip
    return root


def test_first_reach_interpolates_between_validations():
    series = Series([0, 10, 20], [0.0, 60.0, 120.0], [0.2, 0.5, 0.8])
    assert first_reach(series, 0.35) == pytest.approx(5.0)
    assert first_reach(series, 0.65) == pytest.approx(15.0)
    assert first_reach(series, 0.1) == 0.0  # above it from the start
    assert first_reach(series, 0.9) is None


def test_smoothing_is_tensorboards_debiased_ema():
    assert smooth([1.0, 0.0, 0.0], 0.5) == pytest.approx([1.0, 1 / 3, 1 / 7])
    assert smooth([1.0, 2.0], 0.0) == [1.0, 2.0]


def test_sft_vs_rl_estimate_table_and_figure(study, tmp_path):
    report = run_report([study], output=tmp_path / "out")
    assert [r.name for r in report.runs] == ["grpo", "sft_100", "sft_400"]
    text = (tmp_path / "out" / "report.md").read_text()
    # sft_100 reaches 0.35: GRPO gets there at step 5 (0.05 steps/example); sft_400's 0.65 at
    # step 15 (0.0375); the median of the two is 0.04375.
    estimate = re.search(r"about \*\*([\d.]+) GRPO steps\*\* \(median over 2 SFT runs\)", text)
    assert estimate and float(estimate.group(1)) == pytest.approx(0.04375, abs=1e-4)
    assert "| sft_100 | 100 | 0.350 | 5.000 | 0.05 |" in text
    assert "| sft_400 | 400 | 0.650 | 15.000 | 0.0375 |" in text
    # the runs table: final/best accuracy, step of best, minutes to it (6 s per step)
    assert "| grpo | GRPOModule | – | 20 | 2.000 | 0.800 | 0.800 | 20 | 2.000 |" in text
    fig = report.figures["sft_vs_rl"]
    left, right = fig.axes
    (sft_line,) = left.get_lines()
    assert list(sft_line.get_xdata()) == [100, 400] and list(sft_line.get_ydata()) == pytest.approx(
        [0.35, 0.65]
    )
    assert left.get_xscale() == "log" and left.get_xlabel() == "SFT training examples (log scale)"
    grpo, *marks = right.get_lines()
    assert list(grpo.get_ydata()) == pytest.approx([0.2, 0.5, 0.8]) and grpo.get_label() == "grpo"
    assert sorted(m.get_ydata()[0] for m in marks) == pytest.approx(
        [0.35, 0.65]
    )  # the SFT accuracies
    assert right.get_ylabel() == "validation accuracy"
    for stem in ("sft_vs_rl", "compare_step", "compare_time", "curves_00"):
        assert (tmp_path / "out" / f"{stem}.png").stat().st_size > 10_000
    pdf = (tmp_path / "out" / "training_plots.pdf").read_bytes()
    assert len(re.findall(rb"/Type /Page\b(?!s)", pdf)) == 3  # a page per run


def test_sft_vs_rl_warns_when_the_runs_were_validated_on_different_sets(tmp_path, caplog):
    root = tmp_path / "runs"
    _run(root, "grpo", "GRPOModule", "RolloutDataModule",
         {"val/accuracy": [(0, 0.2), (10, 0.5)]}, val_source="data/math/test500.jsonl")  # fmt: skip
    _run(root, "sft_same", "SFTModule", "SFTDataModule", {"val/accuracy": [(9, 0.35)]},
         limit=100, val_source="data/math/test500.jsonl")  # fmt: skip
    _run(root, "sft_other", "SFTModule", "SFTDataModule", {"val/accuracy": [(9, 0.3)]},
         limit=200, val_source="data/math/test500.jsonl", val_limit=64)  # fmt: skip
    with caplog.at_level("WARNING"):
        run_report([root], kinds=["sft_vs_rl"], output=tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "**Warning: not comparable.** sft_other validated on another set than grpo" in text
    assert "sft_same" not in text.split("not comparable.**")[1].split("validated")[0]
    assert "not comparable" in caplog.text
    (root / "sft_other").rename(tmp_path / "elsewhere")
    run_report([root], kinds=["sft_vs_rl"], output=tmp_path / "out2")
    assert "not comparable" not in (tmp_path / "out2" / "report.md").read_text()


def test_on_policy_kl_and_clip_panels_say_why_they_are_flat(tmp_path):
    from lit_align.report.figures import ZERO_ON_POLICY, curves_figure
    from lit_align.report.runs import Run

    zeros = [(s, 0.0) for s in range(5)]
    run = _run(tmp_path, "grpo", "GRPOModule", "RolloutDataModule",
               {"train/kl_to_rollout": zeros, "train/clip_frac": zeros,
                "train/grad_norm": [(s, 1.0 + s) for s in range(5)]})  # fmt: skip
    fig = curves_figure(Run("grpo", run))
    notes = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in fig.axes}
    assert notes["KL"] == [ZERO_ON_POLICY["KL"]] and "on-policy" in notes["KL"][0]
    assert notes["Clip fraction"] == [ZERO_ON_POLICY["Clip fraction"]]
    assert notes["Gradient norm"] == []  # only a panel that is flat at 0 gets the note


def test_compare_draws_one_line_per_run_against_step_and_time(study, tmp_path):
    report = run_report([study], kinds=["compare"], metrics=["val/accuracy", "rollout/reward"],
                        output=tmp_path / "c")  # fmt: skip
    acc_ax, reward_ax = report.figures["compare_step"].axes
    assert [line.get_label() for line in acc_ax.get_lines()] == ["grpo", "sft_100", "sft_400"]
    assert [line.get_label() for line in reward_ax.get_lines()] == ["grpo"]  # only grpo logs it
    assert acc_ax.get_xlabel() == "optimizer step"
    time_ax = report.figures["compare_time"].axes[0]
    assert time_ax.get_xlabel() == "wall-clock time (min)"
    assert list(time_ax.get_lines()[0].get_xdata()) == [0.0, 1.0, 2.0]  # steps 0/10/20, 6 s each
    with pytest.raises(ValueError, match=r"logged by none of the runs"):
        run_report([study], kinds=["compare"], metrics=["val/nope"], output=tmp_path / "d")


def test_a_resumed_step_keeps_its_last_value_and_bad_paths_are_named(tmp_path):
    run = _run(tmp_path, "r", "SFTModule", "SFTDataModule",
               {"train/loss": [(0, 3.0), (1, 2.0), (1, 1.5), (2, 1.0)]})  # fmt: skip
    (found,) = find_runs([run])
    assert found.scalars["train/loss"].values == pytest.approx([3.0, 1.5, 1.0])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no TensorBoard event files"):
        find_runs([tmp_path / "empty"])
    assert main(["report", str(tmp_path / "nowhere")]) == 1


def test_scaling_counts_parameters_from_the_model_config(tmp_path):
    from lit_align.models import load_model_and_tokenizer

    specs = {
        "small": "tiny:hidden_size=64,num_layers=2",
        "large": "tiny:hidden_size=128,num_layers=4",
    }
    finals = {"small": 0.3, "large": 0.6}
    for name, spec in specs.items():
        _run(tmp_path / "runs", name, "GRPOModule", "RolloutDataModule",
             {"val/accuracy": [(0, 0.2), (5, finals[name])]}, model={"model_name_or_path": spec})  # fmt: skip
    counts = {
        n: sum(p.numel() for p in load_model_and_tokenizer(s)[0].parameters())
        for n, s in specs.items()
    }
    report = run_report([tmp_path / "runs"], output=tmp_path / "s")
    assert "scaling" in report.figures
    left, right = report.figures["scaling"].axes
    (line,) = left.get_lines()
    assert list(line.get_xdata()) == [counts["small"], counts["large"]]
    assert list(line.get_ydata()) == pytest.approx([0.3, 0.6]) and left.get_xscale() == "log"
    assert len(right.get_lines()) == 2
    text = (tmp_path / "s" / "report.md").read_text()
    ratio = counts["large"] / counts["small"]
    assert f"from 0.300 (small, {counts['small']:,} parameters) to 0.600 (large" in text
    assert f"+0.300 for {ratio:.1f}× the parameters" in text


@pytest.mark.slow
def test_the_demo_sweep_and_its_report_from_the_command_line(tmp_path):
    """The CPU demo (~2 min on 2 cores): both sizes learn, the larger more; the report's numbers
    are the event files' and its figures hold the lines they should."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = REPO / "configs" / "demo" / "sweep.yaml"
    cli = [sys.executable, "-m", "lit_align.cli"]
    subprocess.run([*cli, "sweep", "--config", str(config)], cwd=tmp_path, check=True)
    subprocess.run([*cli, "report", "runs/demo_sweep"], cwd=tmp_path, check=True)
    out = tmp_path / "runs" / "demo_sweep" / "report"
    text = (out / "report.md").read_text()
    finals = {}
    for name in ("small", "large"):
        events = EventAccumulator(str(tmp_path / "runs" / "demo_sweep" / name / "version_0"))
        events.Reload()
        values = [e.value for e in events.Scalars("val/accuracy")]
        finals[name] = values[-1]
        row = re.search(
            rf"^\| {name} \| GRPOModule \| ([\d,]+) \| 12 \| [\d.]+ \| ([\d.]+) \|", text, re.M
        )
        assert row and float(row.group(2)) == pytest.approx(values[-1], abs=5e-4)
        assert values[-1] > values[0] + 0.05, values  # it learns
    assert finals["large"] > finals["small"]
    # the README's figures (2 CPU cores, fixed seeds; ±0.05)
    assert finals["small"] == pytest.approx(figure("sweep_demo_small_final"), abs=0.05)
    assert finals["large"] == pytest.approx(figure("sweep_demo_large_final"), abs=0.05)
    assert "## Scaling" in text and "the parameters" in text
    for stem in ("scaling", "compare_step", "compare_time", "curves_00", "curves_01"):
        assert (out / f"{stem}.png").stat().st_size > 10_000
    assert (out / "training_plots.pdf").exists()


def test_the_samples_section_shows_multi_turn_transcripts(tmp_path):
    import json

    run = _run(tmp_path / "runs", "tools", "GRPOModule", "RolloutDataModule",
               {"val/accuracy": [(0, 0.2), (1, 0.4)]})  # fmt: skip
    call = '<tool_call>{"name": "calculator"}</tool_call>'
    rows = [
        {"round": 0, "response": "12", "reward": 0.0},
        {"round": 3, "response": "<answer>1776</answer>", "reward": 1.0, "transcript": [
            {"role": "assistant", "content": call},
            {"role": "tool", "name": "calculator", "content": "1776"},
            {"role": "assistant", "content": "<answer>1776</answer>"},
        ]},
    ]  # fmt: skip
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_report([tmp_path / "runs"], output=tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 12 (reward 0.00) | [assistant] <tool_call>" in text
    assert "[tool calculator] 1776 [assistant] <answer>1776</answer> (reward 1.00) |" in text
