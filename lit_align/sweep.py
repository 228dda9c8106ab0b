"""``lit_align sweep --config sweep.yaml``: a grid of ``lit_align fit`` runs, each its own process.

A sweep file::

    name: lr_sweep                    # the sweep directory is ROOT/NAME
    root: runs
    config: ../grpo_gsm8k.yaml        # base config (or a list: base, overlays…), relative to this file
    args:                             # overrides for every point (any --a.b.c of lit_align fit)
      trainer.max_steps: 200
    grid:                             # the points are the product of the axes
      model.init_args.optimizer.init_args.lr: [1.0e-6, 3.0e-6, 1.0e-5]   # an override axis
      size:                           # a named axis: label -> a bundle of overrides
        0.5b: {model.init_args.model_name_or_path: Qwen/Qwen2-0.5B-Instruct}
        1.5b: {model.init_args.model_name_or_path: Qwen/Qwen2-1.5B-Instruct}
    points: []                        # or/and explicit points: mappings of overrides (+ optional name)
    name: "{size}_lr{lr}"             # (key name_template) axis names, or an override's last part
    launcher: {parallel: 2, devices_per_run: 2}   # or {cluster: slurm, slurm: {...}}

Each point runs as ``lit_align fit`` with its overrides and a logger pinned to
``ROOT/NAME/POINT/version_0``; ``{name}`` and ``{sweep_dir}`` in override values are filled in.
The point's directory holds ``point.json`` (its overrides and command), ``sweep_status.json``
and ``sweep.log``; the sweep directory holds ``manifest.json``. A rerun skips finished points,
resumes interrupted or failed ones from their ``last.ckpt`` (``--ckpt_path last``), and starts
the others afresh.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Launcher", "Point", "Sweep", "load_sweep", "run_point", "run_sweep"]

_TOP_KEYS = {"name", "root", "config", "args", "grid", "points", "name_template", "launcher"}


@dataclass
class Launcher:
    """How points run.

    Attributes:
        parallel: points at once on this machine.
        devices_per_run: GPUs per point; each running point gets its own ``CUDA_VISIBLE_DEVICES``
            slice and ``--trainer.devices``. 0: leave devices to the config.
        cluster: None (this machine) or a submitit cluster: ``slurm``, ``local`` (subprocesses
            through submitit, for trying a cluster setup), ``debug``.
        slurm: submitit parameters (``slurm_partition``, ``timeout_min``, ``gpus_per_node``, …).
    """

    parallel: int = 1
    devices_per_run: int = 0
    cluster: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Point:
    """One run of a sweep: its name, overrides and directory."""

    name: str
    overrides: dict[str, Any]
    dir: Path

    @property
    def run_dir(self) -> Path:
        return self.dir / "version_0"

    @property
    def status_path(self) -> Path:
        return self.dir / "sweep_status.json"

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {"state": "new"}


@dataclass
class Sweep:
    """An expanded sweep file."""

    path: Path
    name: str
    dir: Path
    configs: list[Path]
    points: list[Point]
    launcher: Launcher


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _cli_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _fill(value: Any, names: dict[str, str]) -> Any:
    """``{name}``/``{sweep_dir}`` filled in strings, lists and mappings."""
    if isinstance(value, str):
        return re.sub(r"\{(name|sweep_dir)\}", lambda m: names[m.group(1)], value)
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def _axes(grid: Any, path: Path) -> list[list[tuple[str, str, dict[str, Any]]]]:
    """Each axis as its values: (axis name, label, overrides)."""
    if not isinstance(grid, dict):
        raise _fail(path, f"grid must be a mapping of axes, got {type(grid).__name__}")
    axes = []
    for key, values in grid.items():
        if isinstance(values, dict):  # a named axis: label -> bundle of overrides
            if not all(isinstance(v, dict) for v in values.values()):
                raise _fail(path, f"grid.{key}: each label of a named axis maps to overrides")
            axes.append([(key, str(label), dict(b)) for label, b in values.items()])
        elif isinstance(values, list) and values:
            name = key.rsplit(".", 1)[-1]
            axes.append([(name, "all" if v is None else _cli_value(v), {key: v}) for v in values])
        else:
            raise _fail(path, f"grid.{key}: give a non-empty list of values or label: overrides")
    return axes


def _name(template: str | None, labels: dict[str, str], path: Path) -> str:
    if template is None:
        return "_".join(f"{k}={v}" for k, v in labels.items()) or "run"

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in labels:
            raise _fail(path, f"name {template!r}: no axis {key!r} (axes: {', '.join(labels)})")
        return labels[key]

    return re.sub(r"\{([^{}]+)\}", value, template)


def load_sweep(path: str | Path) -> Sweep:
    """Read and expand a sweep file (nothing runs).

    Raises:
        ValueError: naming the file and the key, for anything malformed (unknown keys, an empty
            axis, a name template with an unknown axis, two points with one name).
    """
    import yaml

    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise _fail(path, "a sweep file is a mapping (name, config, grid, …)")
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}; accepted: {sorted(_TOP_KEYS)}")
    for key in ("name", "config"):
        if not spec.get(key):
            raise _fail(path, f"missing {key!r}")
    configs = spec["config"] if isinstance(spec["config"], list) else [spec["config"]]
    configs = [(path.parent / c).resolve() for c in configs]
    for config in configs:
        if not config.is_file():
            raise _fail(
                path, f"config {config} does not exist (paths are relative to the sweep file)"
            )
    sweep_dir = Path(spec.get("root", "runs")) / spec["name"]
    common = dict(spec.get("args") or {})
    combos = list(itertools.product(*_axes(spec.get("grid") or {}, path)))
    if not spec.get("grid"):
        combos = []
    explicit = spec.get("points") or []
    if not combos and not explicit:
        raise _fail(path, "no points: give a grid, points, or both")
    points, seen = [], set()
    rows = [
        (
            {axis: label for axis, label, _ in combo},
            {k: v for _, _, b in combo for k, v in b.items()},
        )
        for combo in combos
    ]
    for i, item in enumerate(explicit):
        if not isinstance(item, dict):
            raise _fail(path, f"points[{i}] must be a mapping of overrides")
        item = dict(item)
        label = str(item.pop("name", f"point{i}"))
        rows.append(({"point": label}, item))
    for labels, overrides in rows:
        template = spec.get("name_template") if "point" not in labels else "{point}"
        name = _safe(_name(template, labels, path))
        if name in seen:
            raise _fail(
                path, f"two points are named {name!r}; put every varying axis in name_template"
            )
        seen.add(name)
        names = {"name": name, "sweep_dir": str(sweep_dir)}
        merged = _fill({**common, **overrides}, names)
        points.append(Point(name, merged, sweep_dir / name))
    launcher = Launcher(**(spec.get("launcher") or {}))
    if launcher.parallel < 1 or launcher.devices_per_run < 0:
        raise _fail(path, "launcher.parallel must be >= 1 and launcher.devices_per_run >= 0")
    return Sweep(path, spec["name"], sweep_dir, configs, points, launcher)


def command(sweep: Sweep, point: Point, resume: bool) -> list[str]:
    """The ``lit_align fit`` command of a point."""
    args = [sys.executable, "-m", "lit_align.cli", "fit"]
    for config in sweep.configs:
        args += ["--config", str(config)]
    overrides = dict(point.overrides)
    if sweep.launcher.devices_per_run:
        overrides.setdefault("trainer.devices", sweep.launcher.devices_per_run)
    args += [f"--{k}={_cli_value(v)}" for k, v in overrides.items()]
    args += [
        f"--trainer.logger.init_args.save_dir={sweep.dir}",
        f"--trainer.logger.init_args.name={point.name}",
        "--trainer.logger.init_args.version=0",
        f"--trainer.default_root_dir={point.dir}",
    ]
    return [*args, "--ckpt_path=last"] if resume else args


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def run_point(sweep: Sweep, point: Point, devices: str | None = None) -> dict[str, Any]:
    """Run one point to its end (or resume it) and record its status; never raises for a failed
    run (the status says ``failed`` with the return code and the log's tail)."""
    point.dir.mkdir(parents=True, exist_ok=True)
    resume = (point.run_dir / "checkpoints" / "last.ckpt").exists()
    if not resume and point.run_dir.exists():
        shutil.rmtree(point.run_dir)  # a start that left no checkpoint: begin clean
    cmd = command(sweep, point, resume)
    _write_json(
        point.dir / "point.json", {"name": point.name, "overrides": point.overrides, "command": cmd}
    )
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    env["MASTER_PORT"] = str(_free_port())  # parallel multi-GPU points must not share a port
    started = time.time()
    _write_json(point.status_path, {"state": "running", "started": started, "resumed": resume})
    with open(point.dir / "sweep.log", "a") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    status = {
        "state": "done" if code == 0 else "failed",
        "returncode": code,
        "started": started,
        "finished": time.time(),
        "resumed": resume,
    }
    if code:
        status["log_tail"] = (point.dir / "sweep.log").read_text()[-1500:]
    _write_json(point.status_path, status)
    return status


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_slices(per_run: int) -> list[str | None]:
    if not per_run:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [d for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    slices = [",".join(ids[i : i + per_run]) for i in range(0, len(ids) - per_run + 1, per_run)]
    if not slices:
        raise ValueError(f"launcher.devices_per_run is {per_run} but {len(ids)} GPUs are visible")
    return list(slices)


def _run_local(sweep: Sweep, todo: list[Point], report: Any) -> None:
    slices = _device_slices(sweep.launcher.devices_per_run)
    workers = min(sweep.launcher.parallel, len(todo), len(slices) if slices[0] else len(todo))
    free = slices[:workers] if slices[0] else [None] * workers  # one slice per running point
    lock = threading.Lock()

    def one(point: Point) -> None:
        with lock:
            devices = free.pop()
        try:
            report(point, run_point(sweep, point, devices))
        finally:
            with lock:
                free.append(devices)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, todo))


def _run_submitit(sweep: Sweep, todo: list[Point], report: Any) -> None:
    try:
        import submitit
    except ImportError as err:
        raise ImportError(
            "launcher.cluster needs submitit: pip install 'lit-align[cluster]'"
        ) from err
    executor = submitit.AutoExecutor(folder=sweep.dir / "submitit", cluster=sweep.launcher.cluster)
    executor.update_parameters(name=f"lit_align_{sweep.name}", **sweep.launcher.slurm)
    jobs = [(point, executor.submit(run_point, sweep, point)) for point in todo]
    for point, job in jobs:
        print(f"  {point.name}: submitted as job {job.job_id}")
    for point, job in jobs:
        try:
            status = job.result()
        except Exception as err:  # the job itself died (preempted, out of time, node failure)
            status = {"state": "failed", "error": f"{type(err).__name__}: {err}"[-1500:]}
            _write_json(point.status_path, status)
        report(point, status)


def write_manifest(sweep: Sweep) -> None:
    """``SWEEP_DIR/manifest.json``: the sweep file, configs, and every point."""
    sweep.dir.mkdir(parents=True, exist_ok=True)
    _write_json(
        sweep.dir / "manifest.json",
        {
            "sweep_file": str(sweep.path.resolve()),
            "name": sweep.name,
            "configs": [str(c) for c in sweep.configs],
            "launcher": asdict(sweep.launcher),
            "points": [
                {"name": p.name, "dir": p.name, "overrides": p.overrides} for p in sweep.points
            ],
        },
    )


def run_sweep(path: str | Path, dry_run: bool = False, only: list[str] | None = None) -> int:
    """Expand a sweep file and run its unfinished points; returns the number of failed points.

    Args:
        path: the sweep file.
        dry_run: print each point's command (and whether it would start, resume or be skipped).
        only: run only the points with these names.
    """
    sweep = load_sweep(path)
    points = [p for p in sweep.points if not only or p.name in only]
    if only and len(points) != len(only):
        missing = set(only) - {p.name for p in points}
        raise ValueError(
            f"no points named {sorted(missing)}; the sweep has {[p.name for p in sweep.points]}"
        )
    todo, done = [], []
    for point in points:
        (done if point.status().get("state") == "done" else todo).append(point)
    print(
        f"sweep {sweep.name}: {len(sweep.points)} points in {sweep.dir}; {len(done)} finished, {len(todo)} to run"
    )
    if dry_run:
        for point in points:
            resume = (point.run_dir / "checkpoints" / "last.ckpt").exists()
            what = "skip (finished)" if point in done else "resume" if resume else "start"
            print(f"\n# {point.name}: {what}\n" + shlex.join(command(sweep, point, resume)))
        return 0
    write_manifest(sweep)
    results: dict[str, dict[str, Any]] = {p.name: p.status() for p in done}
    lock = threading.Lock()

    def report(point: Point, status: dict[str, Any]) -> None:
        with lock:
            results[point.name] = status
            seconds = status.get("finished", 0) - status.get("started", 0)
            print(
                f"  {point.name}: {status['state']}"
                + (f" in {seconds:.0f} s" if seconds > 0 else "")
            )

    if todo:
        (_run_submitit if sweep.launcher.cluster else _run_local)(sweep, todo, report)
    failed = [name for name, s in results.items() if s.get("state") != "done"]
    for name in failed:
        print(
            f"\nFAILED {name} (see {sweep.dir / name / 'sweep.log'}):\n{results[name].get('log_tail', results[name].get('error', ''))[-600:]}"
        )
    print(f"\nsweep {sweep.name}: {len(results) - len(failed)} finished, {len(failed)} failed")
    return len(failed)
