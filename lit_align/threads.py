"""torch's CPU threads for a run: ``--threads auto|N``.

``auto`` takes the cores this process may run on (``os.sched_getaffinity``: a SLURM or taskset
allocation, not the whole machine) less the cores other processes keep busy at start-up (sampled
from ``/proc/stat`` over a quarter of a second), at least 1. Measured on 2 cores (README,
"Threads"): idle, 2 threads run the SFT demo 1.25× faster than 1; beside another 2-thread job,
2 spinning OpenMP threads make it 3.5× slower than 1 thread (106 s vs 30 s), because each waits
for a thread that is descheduled. The thread count does not change a run's numbers (the demos'
curves are the same with 1 and 2 threads), so choosing it at start-up costs no reproducibility.
"""

from __future__ import annotations

import os
import time
from typing import Literal

__all__ = ["Threads", "apply_threads", "available_cores", "busy_cores", "resolve_threads"]

Threads = int | Literal["auto"]


def available_cores() -> int:
    """Cores this process may use (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def busy_cores(seconds: float = 0.25) -> float:
    """Cores of the machine kept busy by other processes now (this one waits while it samples);
    0 where ``/proc/stat`` is not readable."""
    before = _cpu_times()
    if before is None:
        return 0.0
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[0] == before[0]:
        return 0.0
    total, idle = after[0] - before[0], after[1] - before[1]
    return (total - idle) / total * (os.cpu_count() or 1)


def resolve_threads(threads: Threads) -> int:
    """The thread count for a ``--threads`` value (``auto``: the free cores, see the module)."""
    if threads == "auto":
        return max(1, min(available_cores(), round((os.cpu_count() or 1) - busy_cores())))
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads must be auto or a number >= 1, got {threads!r}")
    return threads


def apply_threads(threads: Threads) -> int:
    """Set torch's intra-op threads for this process; returns the count."""
    import torch

    count = resolve_threads(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
