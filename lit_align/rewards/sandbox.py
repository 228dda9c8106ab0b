"""A persistent pool of grading subprocesses with a hard per-answer time limit.

Why subprocesses started with ``subprocess.Popen`` (not ``multiprocessing``): they can be started
from any thread, from forked DataLoader workers (which are daemonic and may not have
``multiprocessing`` children) and from the main thread alike, and a stuck one can be killed
outright. math-verify's own timeout relies on SIGALRM, which only works on the main thread and
cannot interrupt a long C-level computation such as ``9**9**9**9``; a kill can.

Each worker holds a small window of tasks in flight. The parent watches the time since each
worker last made progress; past ``timeout_s`` the worker is killed, its current answer scores
False (a counted timeout), a fresh worker starts and the rest of its window is sent again.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = ["GradingPool", "get_pool"]


# Environment variables a grader subprocess inherits; everything else is dropped.
_INHERITED_ENV = frozenset(
    {"PATH", "PYTHONPATH", "PYTHONHOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "SYSTEMROOT"}
)


@dataclass
class _Worker:
    proc: subprocess.Popen
    ready: bool = False
    buffer: bytes = b""
    inflight: deque[int] = field(default_factory=deque)  # task ids, in the order sent
    since: float = 0.0  # when the current task started (or the worker started)


class GradingPool:
    """Grades (answer, gold) pairs of normalized strings in sandboxed worker processes.

    Args:
        num_workers: worker processes (default: min(2, CPU count)).
        timeout_s: hard limit for one answer; a worker past it is killed and the answer is False.
        memory_mb: address-space limit of each worker.
        window: tasks in flight per worker (amortizes pipe round trips).
        startup_timeout_s: how long a new worker may take to import sympy and math-verify.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = 4.0,
        memory_mb: int = 2048,
        window: int = 16,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.num_workers = num_workers or max(1, min(2, os.cpu_count() or 1))
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.window = window
        self.startup_timeout_s = startup_timeout_s
        self.stats = {"graded": 0, "timeouts": 0, "crashes": 0, "restarts": 0}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._workers: list[_Worker] = []
        self._failed_starts = 0

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> _Worker:
        # A scrubbed environment: what Python needs to start and import, never API keys or
        # tokens (graders parse untrusted model output).
        env = {k: v for k, v in os.environ.items() if k in _INHERITED_ENV}
        env.update(
            LIT_ALIGN_GRADER_MEMORY_MB=str(self.memory_mb),
            PYTHONDONTWRITEBYTECODE="1",
            OMP_NUM_THREADS="1",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "lit_align.rewards._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in the parent's terminal does not hit workers
        )
        return _Worker(proc=proc, since=time.monotonic())

    def _ensure_workers(self) -> None:
        alive = [w for w in self._workers if w.proc.poll() is None]
        for dead in (w for w in self._workers if w not in alive):  # died between calls
            self._kill(dead)
            self.stats["crashes"] += 1
            self.stats["restarts"] += 1
        self._workers = alive
        while len(self._workers) < self.num_workers:
            self._workers.append(self._spawn())

    @staticmethod
    def _kill(worker: _Worker) -> None:
        try:
            worker.proc.kill()
            worker.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for pipe in (worker.proc.stdin, worker.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop every worker (the pool restarts them on the next call)."""
        with self._lock:
            for worker in self._workers:
                self._kill(worker)
            self._workers = []

    def __del__(self) -> None:  # best effort; workers also exit when their stdin closes
        if getattr(self, "_pid", None) == os.getpid():
            for worker in getattr(self, "_workers", []):
                self._kill(worker)

    # ------------------------------------------------------------------ grading

    def verify_many(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Return, for each (answer, gold) pair, whether math-verify finds them equal.

        Never raises for any content of the pairs: a timeout, crash or parse failure is False.
        """
        if not pairs:
            return []
        with self._lock:
            return self._run(pairs)

    def _send(self, worker: _Worker, task_id: int, pair: tuple[str, str]) -> bool:
        line = json.dumps({"i": task_id, "a": pair[0], "g": pair[1]}) + "\n"
        try:
            assert worker.proc.stdin is not None
            worker.proc.stdin.write(line.encode())
            worker.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        if not worker.inflight:
            worker.since = time.monotonic()
        worker.inflight.append(task_id)
        return True

    def _replace(
        self, worker: _Worker, pending: deque[int], results: list[bool | None], kind: str
    ) -> None:
        """Kill ``worker``; its current task fails (``kind`` counted), the rest go back to pending."""
        self._kill(worker)
        if not worker.ready:
            self._failed_starts += 1
            if self._failed_starts >= 3:
                raise RuntimeError(
                    "grading workers fail to start (`python -m lit_align.rewards._worker`); "
                    "check that math-verify is installed in this environment"
                )
        self.stats[kind] += 1
        self.stats["restarts"] += 1
        if worker.inflight:
            results[worker.inflight.popleft()] = False
        pending.extendleft(reversed(worker.inflight))
        self._workers[self._workers.index(worker)] = self._spawn()

    def _run(self, pairs: list[tuple[str, str]]) -> list[bool]:
        results: list[bool | None] = [None] * len(pairs)
        pending: deque[int] = deque(range(len(pairs)))
        self._ensure_workers()
        remaining = len(pairs)
        while remaining:
            for worker in list(self._workers):  # top up the windows of ready workers
                while worker.ready and pending and len(worker.inflight) < self.window:
                    task = pending.popleft()
                    if not self._send(worker, task, pairs[task]):
                        pending.appendleft(task)
                        self._replace(worker, pending, results, "crashes")
                        break
            fds = {w.proc.stdout.fileno(): w for w in self._workers if w.proc.stdout is not None}
            readable, _, _ = select.select(list(fds), [], [], 0.05)
            now = time.monotonic()
            for fd in readable:
                worker = fds[fd]
                chunk = os.read(fd, 1 << 16)
                if not chunk:  # the worker died (memory limit, signal)
                    remaining -= 1 if worker.inflight else 0
                    self._replace(worker, pending, results, "crashes")
                    continue
                worker.buffer += chunk
                *lines, worker.buffer = worker.buffer.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if msg.get("ready"):
                        worker.ready, worker.since = True, now
                        self._failed_starts = 0
                        continue
                    task = worker.inflight.popleft()
                    results[task] = bool(msg["r"])
                    remaining -= 1
                    worker.since = now
            for worker in list(self._workers):
                limit = self.timeout_s if worker.ready else self.startup_timeout_s
                if (worker.inflight or not worker.ready) and now - worker.since > limit:
                    if not worker.ready:
                        log.warning("grading worker did not start within %.0f s; restarting", limit)
                    remaining -= 1 if worker.inflight else 0
                    self._replace(worker, pending, results, "timeouts")
        self.stats["graded"] += len(pairs)
        return [bool(r) for r in results]


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would never be released in the child.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_pool() -> GradingPool:
    """The process-wide pool, created on first use and again in a forked child.

    ``LIT_ALIGN_GRADER_WORKERS`` (default min(2, CPUs)) and ``LIT_ALIGN_GRADER_TIMEOUT_S``
    (default 4) set its size and per-answer time limit.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            # In a forked child the inherited pool's pipes belong to the parent: leave them alone.
            _POOL = GradingPool(
                num_workers=int(os.environ.get("LIT_ALIGN_GRADER_WORKERS", "0")) or None,
                timeout_s=float(os.environ.get("LIT_ALIGN_GRADER_TIMEOUT_S", "4")),
            )
        return _POOL
