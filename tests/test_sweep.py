"""``lit_align sweep``: exact grid expansion, commands, parallel points in their own directories,
a killed point resumed from its checkpoint while a finished one is skipped, submitit's launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_align.cli import main
from lit_align.report.runs import Run
from lit_align.sweep import command, load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]
SFT_DEMO = REPO / "configs" / "demo" / "sft.yaml"

# A short SFT demo: no validation, a checkpoint every 5 steps, 256 examples.
OVERLAY = """\
trainer:
  max_epochs: 1000
  max_steps: 12
  log_every_n_steps: 1
  val_check_interval: null
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        save_last: true
        every_n_train_steps: 5
data:
  init_args:
    val_source: null
    synthetic_size: 256
"""


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "short.yaml").write_text(OVERLAY)
    path = tmp_path / "sweep.yaml"
    path.write_text(body.replace("BASE", str(SFT_DEMO)))
    return path


def test_the_grid_expands_exactly(tmp_path):
    path = _write(
        tmp_path,
        """
name: grid
root: ROOT
config: [BASE, short.yaml]
args: {trainer.max_steps: 7, warm_start.output: "{sweep_dir}/{name}/init"}
grid:
  model.init_args.optimizer.init_args.lr: [0.001, 0.003, 0.01]
  size:
    s: {model.init_args.model_name_or_path: "tiny:hidden_size=64", trainer.max_steps: 9}
    m: {model.init_args.model_name_or_path: "tiny:hidden_size=128"}
points:
  - {name: extra, seed_everything: 3}
name_template: "{size}_lr{lr}"
""".replace("ROOT", str(tmp_path / "runs")),
    )
    sweep = load_sweep(path)
    names = [p.name for p in sweep.points]
    assert names == [
        "s_lr0.001", "m_lr0.001", "s_lr0.003", "m_lr0.003", "s_lr0.01", "m_lr0.01", "extra",
    ]  # fmt: skip
    first = sweep.points[0]
    assert first.overrides == {
        "trainer.max_steps": 9,  # the axis overrides the common args
        "warm_start.output": f"{tmp_path}/runs/grid/s_lr0.001/init",
        "model.init_args.optimizer.init_args.lr": 0.001,
        "model.init_args.model_name_or_path": "tiny:hidden_size=64",
    }
    assert sweep.points[-1].overrides["seed_everything"] == 3
    assert sweep.configs == [SFT_DEMO, (tmp_path / "short.yaml").resolve()]
    cmd = command(sweep, sweep.points[3], resume=False)
    assert cmd[1:4] == ["-m", "lit_align.cli", "fit"]
    assert "--model.init_args.optimizer.init_args.lr=0.003" in cmd
    assert "--trainer.max_steps=7" in cmd  # m keeps the common value
    assert f"--trainer.logger.init_args.save_dir={tmp_path}/runs/grid" in cmd
    assert "--trainer.logger.init_args.name=m_lr0.003" in cmd
    assert "--ckpt_path=last" in command(sweep, sweep.points[3], resume=True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name: x\nconfig: BASE\ngrids: {}\n", "unknown keys \\['grids'\\]"),
        ("name: x\nconfig: nowhere.yaml\ngrid: {seed_everything: [1]}\n", "does not exist"),
        ("name: x\nconfig: BASE\ngrid: {seed_everything: []}\n", "non-empty list"),
        ("name: x\nconfig: BASE\n", "no points"),
        (
            "name: x\nconfig: BASE\ngrid: {seed_everything: [1, 2]}\nname_template: run\n",
            "two points are named 'run'",
        ),
        (
            "name: x\nconfig: BASE\ngrid: {seed_everything: [1]}\nname_template: '{lr}'\n",
            "no axis 'lr'",
        ),
    ],
)
def test_bad_sweep_files_name_the_file_and_the_key(tmp_path, body, message):
    with pytest.raises(ValueError, match=message) as err:
        load_sweep(_write(tmp_path, body))
    assert str(tmp_path / "sweep.yaml") in str(err.value)


def test_parallel_points_keep_their_own_directories(tmp_path, capsys):
    path = _write(
        tmp_path,
        """
name: par
root: ROOT
config: [BASE, short.yaml]
grid:
  model.init_args.optimizer.init_args.lr: [0.001, 0.003]
name_template: "lr{lr}"
launcher: {parallel: 2}
""".replace("ROOT", str(tmp_path / "runs")),
    )
    start = time.monotonic()
    assert main(["sweep", "--config", str(path)]) == 0
    assert "2 finished, 0 failed" in capsys.readouterr().out
    sweep = load_sweep(path)
    statuses = [p.status() for p in sweep.points]
    assert all(s["state"] == "done" for s in statuses)
    # they ran at the same time: each started before the other finished
    assert statuses[0]["started"] < statuses[1]["finished"]
    assert statuses[1]["started"] < statuses[0]["finished"]
    for point, lr in zip(sweep.points, (0.001, 0.003), strict=True):
        run = Run(point.name, point.run_dir)
        assert run.config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == lr
        assert run.scalars["train/lr"].steps[-1] == 11  # all 12 steps logged, in its own dir
        recorded = json.loads((point.dir / "point.json").read_text())
        assert recorded["overrides"] == {"model.init_args.optimizer.init_args.lr": lr}
    manifest = json.loads((sweep.dir / "manifest.json").read_text())
    assert [p["name"] for p in manifest["points"]] == ["lr0.001", "lr0.003"]
    print(f"two points in parallel: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
def test_a_killed_point_resumes_and_a_finished_one_is_skipped(tmp_path):
    path = _write(
        tmp_path,
        """
name: res
root: ROOT
config: [BASE, short.yaml]
points:
  - {name: quick}
  - {name: long, trainer.max_steps: 150}
""".replace("ROOT", str(tmp_path / "runs")),
    )
    assert run_sweep(path, only=["quick"]) == 0
    sweep = load_sweep(path)
    quick, long = sweep.points
    quick_status = quick.status()
    # The long point, killed (SIGKILL to the sweep and its fit) once it has a checkpoint:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lit_align.cli", "sweep", "--config", str(path), "--only", "long"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = long.run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.exists() and long.status()["state"] == "running"
    killed_at = Run("long", long.run_dir).steps

    assert run_sweep(path) == 0
    assert quick.status() == quick_status  # finished: skipped, untouched
    status = long.status()
    assert status["state"] == "done" and status["resumed"] is True
    steps = Run("long", long.run_dir).scalars["train/lr"].steps
    assert 0 < killed_at < 149 and steps == list(range(150))  # continued, nothing twice
    assert "--ckpt_path=last" in (long.dir / "sweep.log").read_text()


def test_submitit_launcher_runs_points_as_jobs(tmp_path):
    pytest.importorskip("submitit")
    path = _write(
        tmp_path,
        """
name: sub
root: ROOT
config: [BASE, short.yaml]
grid: {trainer.max_steps: [3]}
launcher: {cluster: debug}
""".replace("ROOT", str(tmp_path / "runs")),
    )
    assert run_sweep(path) == 0
    (point,) = load_sweep(path).points
    assert point.status()["state"] == "done"
    assert Run(point.name, point.run_dir).scalars["train/lr"].steps[-1] == 2
    assert (point.dir.parent / "submitit").is_dir()
