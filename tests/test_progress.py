"""Progress a file log can read (a line per round or per N steps), SIGTERM's exit status, and
the thread setting."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lit_align.callbacks.progress import format_duration

from lit_align import threads

ROOT = Path(__file__).resolve().parents[1]


def test_format_duration():
    assert format_duration(4.04) == "4.0 s"
    assert format_duration(42.4) == "42 s"
    assert format_duration(187) == "3 min 07 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_duration(-3) == "0.0 s"


def test_an_sft_run_logged_to_a_file_prints_step_lines_and_sigterm_exits_143(tmp_path):
    """stdout is a pipe, as under nohup or SLURM: no progress bar, a flushed line every 2 steps;
    SIGTERM stops the run with 143 (128 + 15), which schedulers read as 'terminated'."""
    command = [sys.executable, "-m", "lit_align.cli", "fit", "--config",
               str(ROOT / "configs/demo/sft.yaml"), "--progress_every_n_steps", "2",
               "--data.init_args.synthetic_size", "4096", "--trainer.max_epochs", "50",
               "--trainer.val_check_interval", "1.0"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # read while it runs: each line arrives when printed
            lines.append(line)
            if sum(line.startswith("lit_align: step ") for line in lines) == 2:
                process.send_signal(signal.SIGTERM)
                break
        lines += process.stdout.readlines()
        code = process.wait(timeout=120)
    finally:
        process.kill()
    stderr = process.stderr.read() if process.stderr else ""
    steps = [ln for ln in lines if ln.startswith("lit_align: step ")]
    assert re.match(
        r"lit_align: step 2/\d+ · epoch 1/50 · loss \d+\.\d{4} · \d+\.\d\d s/step · ETA ", steps[0]
    ), steps
    assert steps[1].startswith("lit_align: step 4/")
    assert "\r" not in "".join(lines)  # no progress bar in a file log
    assert code == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr


def test_grpo_prints_one_line_per_round(tmp_path, capsys):
    from lit_align.cli import main

    args = ["fit", "--config", str(ROOT / "configs/demo/grpo.yaml"), "--warm_start.config", "null"]
    args += ["--model.init_args.model_name_or_path", "tiny", "--trainer.max_epochs", "2"]
    args += ["--data.init_args.rollout_batch_size", "32", "--data.init_args.train_batch_size", "32"]
    args += ["--data.init_args.micro_batch_size", "16", "--data.init_args.val_limit", "8"]
    args += ["--data.init_args.sampling.max_new_tokens", "6", "--trainer.logger", "false"]
    args += ["--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
    args += [
        "--model.init_args.validate_at_start",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    rounds = [ln for ln in out.splitlines() if ln.startswith("lit_align: round ")]
    assert len(rounds) == 2, out
    pattern = (
        r"lit_align: round 1/2 · step 1 · reward \d\.\d{3} · accuracy \d\.\d{3} · "
        r"kl_to_rollout 0\.0000 · \d+\.\d s/round \(train \d+\.\d s, rollout \d+\.\d s\) · ETA "
    )
    assert re.match(pattern, rounds[0]), rounds[0]
    assert rounds[1].startswith("lit_align: round 2/2 · step 2") and rounds[1].endswith("ETA 0.0 s")


def test_threads_auto_leaves_the_cores_others_keep_busy(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: 0.1)
    assert threads.resolve_threads("auto") == 2  # idle: every core
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: 1.9)
    assert threads.resolve_threads("auto") == 1  # another 2-thread job: one thread, never 0
    assert threads.resolve_threads(3) == 3
    with pytest.raises(ValueError, match="--threads must be auto or a number >= 1"):
        threads.resolve_threads(0)
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads.busy_cores(0.5) >= 0.7
    finally:
        spinner.kill()


def test_sft_prints_every_n_steps_and_at_the_end(tmp_path, capsys):
    from lit_align.cli import main

    args = ["fit", "--config", str(ROOT / "configs/demo/sft.yaml"), "--progress_every_n_steps", "3"]
    args += ["--data.init_args.synthetic_size", "128", "--data.init_args.val_limit", "8"]
    args += ["--trainer.max_epochs", "1", "--trainer.val_check_interval", "1.0"]
    args += ["--trainer.logger", "false", "--trainer.callbacks", "[]"]
    args += ["--trainer.enable_checkpointing", "false", "--trainer.default_root_dir", str(tmp_path)]
    assert main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("lit_align: ")]
    assert [ln.split(" · ")[0] for ln in lines] == ["lit_align: step 3/4", "lit_align: step 4/4"]
    assert "val/accuracy" in lines[1] and lines[1].endswith("ETA 0.0 s")  # the last validation
