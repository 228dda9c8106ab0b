"""A persistent pool of sandbox subprocesses with a hard per-task time limit: the graders
(``lit_align.rewards._worker``, math-verify) and the python tool (``lit_align.rewards._python_worker``,
model-written code, one forked child per call).

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
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["GradingPool", "get_pool", "python_pool", "timeouts_in_this_thread", "worker_pool"]


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
    generation: int = 0  # the pool's generation when started (close() retires older ones)


class GradingPool:
    """Runs tasks in sandboxed worker processes: grading (answer, gold) pairs of normalized
    strings (:meth:`verify_many`), or any worker's JSON tasks (:meth:`run_many`).

    Concurrent callers (threads) do not wait for each other's batches: each call checks out idle
    workers (up to ``num_workers``), or starts new ones up to ``max_workers`` in all, and returns
    them when done. Only when every one of ``max_workers`` is busy does a call wait for one.

    Args:
        num_workers: workers one call uses (default: min(2, CPU count)).
        timeout_s: limit for one answer on an idle machine; it scales with the load (× the
            1-minute load average per CPU, when above 1), so that a loaded machine does not turn
            slow answers into zeros. A worker past it is killed and the answer scores False (a
            counted timeout).
        memory_mb: address-space limit of each worker.
        window: tasks in flight per worker (amortizes pipe round trips).
        startup_timeout_s: how long a new worker may take to import sympy and math-verify.
        max_workers: workers alive at most, over all concurrent calls (default max(8, num_workers)).
        budget_s: a time budget for one call: answers still pending when it runs out score
            False and are counted (``budget_timeouts``); None: no budget.
        worker: the worker's module (``python -m``); it prints ``{"ready": true}``, then one
            ``{"i": id, "r": result}`` line per ``{"i": id, …}`` task line.
        failed: the result of a task that timed out, crashed its worker or ran out of budget.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        timeout_s: float = 4.0,
        memory_mb: int = 2048,
        window: int = 16,
        startup_timeout_s: float = 60.0,
        max_workers: int | None = None,
        budget_s: float | None = None,
        worker: str = "lit_align.rewards._worker",
        failed: Any = False,
    ) -> None:
        self.num_workers = num_workers or max(1, min(2, os.cpu_count() or 1))
        self.max_workers = max(max_workers or 8, self.num_workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.window = window
        self.startup_timeout_s = startup_timeout_s
        self.budget_s = budget_s
        self.worker = worker
        self.failed = failed
        self.stats = {
            "graded": 0, "timeouts": 0, "budget_timeouts": 0, "crashes": 0, "restarts": 0,
        }  # fmt: skip
        self._cond = threading.Condition()  # guards the idle list, the count and the stats
        self._pid = os.getpid()
        self._workers: list[_Worker] = []  # idle workers
        self._alive = 0  # idle + checked out
        self._generation = 0  # bumped by close(): older checked-out workers die on return
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
            [sys.executable, "-m", self.worker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in the parent's terminal does not hit workers
        )
        return _Worker(proc=proc, since=time.monotonic(), generation=self._generation)

    def _checkout(self) -> list[_Worker]:
        """Idle workers for one call (new ones started when none is idle and the cap allows)."""
        with self._cond:
            while True:
                alive = [w for w in self._workers if w.proc.poll() is None]
                for dead in (w for w in self._workers if w not in alive):  # died while idle
                    self._kill(dead)
                    self._alive -= 1
                    self.stats["crashes"] += 1
                self._workers = alive
                taken = self._workers[: self.num_workers]
                del self._workers[: len(taken)]
                new = min(self.num_workers - len(taken), self.max_workers - self._alive)
                if taken or new > 0:
                    self._alive += max(new, 0)
                    break
                self._cond.wait()
        return taken + [self._spawn() for _ in range(max(new, 0))]

    def _checkin(self, workers: list[_Worker]) -> None:
        with self._cond:
            for worker in workers:
                if worker.proc.poll() is None and worker.generation == self._generation:
                    self._workers.append(worker)
                else:
                    self._kill(worker)
                    self._alive -= 1
            self._cond.notify_all()

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
        """Stop every idle worker (busy ones stop when their call ends); later calls restart."""
        with self._cond:
            self._generation += 1
            for worker in self._workers:
                self._kill(worker)
            self._alive -= len(self._workers)
            self._workers = []

    def __del__(self) -> None:  # best effort; workers also exit when their stdin closes
        if getattr(self, "_pid", None) == os.getpid():
            for worker in getattr(self, "_workers", []):
                self._kill(worker)

    # ------------------------------------------------------------------ grading

    def verify_many(
        self, tasks: list[tuple[str, ...]], budget_s: float | None = None
    ) -> list[bool]:
        """Return, for each task, whether math-verify finds answer and gold equal.

        A task is ``(answer, gold)`` (normalized strings) or ``(answer, gold, raw_answer,
        raw_gold)``: the worker then also lets math-verify extract from the raw texts.
        ``budget_s`` (default: the pool's) bounds the whole call. Never raises for any content:
        a timeout, crash or parse failure is False, and timeouts are counted in ``stats`` and in
        :func:`timeouts_in_this_thread`.
        """
        payloads = [
            {"a": t[0], "g": t[1], **({"ra": t[2], "rg": t[3]} if len(t) == 4 else {})}
            for t in tasks
        ]
        return [bool(r) for r in self.run_many(payloads, budget_s)]

    def run_many(self, tasks: list[dict[str, Any]], budget_s: float | None = None) -> list[Any]:
        """Each task's result from the workers (the task dict is sent with its ``i`` added);
        a task that times out, crashes its worker or runs out of the budget gets ``failed``."""
        if not tasks:
            return []
        budget = self.budget_s if budget_s is None else budget_s
        deadline = None if budget is None else time.monotonic() + budget
        workers = self._checkout()
        try:
            return _Call(self, workers, tasks, deadline).run()
        finally:
            self._checkin(workers)

    def _count(self, kind: str, n: int = 1) -> None:
        with self._cond:
            self.stats[kind] += n
        if kind in ("timeouts", "budget_timeouts"):
            _THREAD.timeouts = getattr(_THREAD, "timeouts", 0) + n


_THREAD = threading.local()


def _load_factor() -> float:
    """The 1-minute load average per CPU when above 1 (capped at 8), else 1."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # not available on this platform
        return 1.0
    return min(max(load, 1.0), 8.0)


def timeouts_in_this_thread() -> int:
    """Answers scored False for lack of time (per-answer limit or budget) by this thread so far,
    over every pool: the difference around a batch is that batch's count."""
    return getattr(_THREAD, "timeouts", 0)


class _Call:
    """One verify_many call on its checked-out workers: sends windows, reads verdicts, replaces
    stuck or dead workers and honours the deadline."""

    def __init__(
        self,
        pool: GradingPool,
        workers: list[_Worker],
        tasks: list[dict[str, Any]],
        deadline: float | None,
    ) -> None:
        self.pool, self.workers, self.tasks, self.deadline = pool, workers, tasks, deadline
        self.results: list[Any] = [None] * len(tasks)
        self.done = [False] * len(tasks)
        self.pending: deque[int] = deque(range(len(tasks)))
        self.limit = pool.timeout_s * _load_factor()

    def run(self) -> list[Any]:
        while not all(self.done):
            now = time.monotonic()
            if self.deadline is not None and now > self.deadline:
                self._out_of_budget()
                break
            self._top_up()
            self._read()
            self._watch()
        with self.pool._cond:
            self.pool.stats["graded"] += len(self.tasks)
        return self.results

    def _send(self, worker: _Worker, task_id: int) -> bool:
        msg = {**self.tasks[task_id], "i": task_id}
        try:
            assert worker.proc.stdin is not None
            worker.proc.stdin.write((json.dumps(msg) + "\n").encode())
            worker.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return False
        if not worker.inflight:
            worker.since = time.monotonic()
        worker.inflight.append(task_id)
        return True

    def _top_up(self) -> None:
        for worker in list(self.workers):  # top up the windows of ready workers
            while worker.ready and self.pending and len(worker.inflight) < self.pool.window:
                task = self.pending.popleft()
                if not self._send(worker, task):
                    self.pending.appendleft(task)
                    self._replace(worker, "crashes")
                    break

    def _read(self) -> None:
        fds = {w.proc.stdout.fileno(): w for w in self.workers if w.proc.stdout is not None}
        readable, _, _ = select.select(list(fds), [], [], 0.05)
        now = time.monotonic()
        for fd in readable:
            worker = fds[fd]
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the worker died (memory limit, signal)
                self._replace(worker, "crashes")
                continue
            worker.buffer += chunk
            *lines, worker.buffer = worker.buffer.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if msg.get("ready"):
                    worker.ready, worker.since = True, now
                    self.pool._failed_starts = 0
                    continue
                self._finish(worker.inflight.popleft(), msg["r"])
                worker.since = now

    def _finish(self, task_id: int, result: Any) -> None:
        self.results[task_id], self.done[task_id] = result, True

    def _watch(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers):
            limit = self.limit if worker.ready else self.pool.startup_timeout_s
            if (worker.inflight or not worker.ready) and now - worker.since > limit:
                if not worker.ready:
                    log.warning("grading worker did not start within %.0f s; restarting", limit)
                self._replace(worker, "timeouts")

    def _replace(self, worker: _Worker, kind: str) -> None:
        """Kill ``worker``; its current task fails (``kind`` counted), the rest of its window goes
        back to pending."""
        pool = self.pool
        pool._kill(worker)
        if not worker.ready:
            pool._failed_starts += 1
            if pool._failed_starts >= 3:
                raise RuntimeError(
                    f"sandbox workers fail to start (`python -m {pool.worker}`); check that "
                    "lit_align (and math-verify, for grading) is installed in this environment"
                )
        pool._count("restarts")
        if worker.inflight:
            self._finish(worker.inflight.popleft(), pool.failed)
            pool._count(kind)
        self.pending.extendleft(reversed(worker.inflight))
        self.workers[self.workers.index(worker)] = pool._spawn()

    def _out_of_budget(self) -> None:
        missing = [i for i, done in enumerate(self.done) if not done]
        for i in missing:
            self._finish(i, self.pool.failed)
        self.pool._count("budget_timeouts", len(missing))
        log.warning(
            "grading budget ran out: %d of %d answers scored 0 (raise the budget, "
            "LIT_ALIGN_GRADER_BUDGET_S, or the workers, LIT_ALIGN_GRADER_WORKERS)",
            len(missing),
            len(self.tasks),
        )
        for i, worker in enumerate(self.workers):  # busy ones hold stale tasks: start afresh
            if worker.inflight:
                self.pool._kill(worker)
                self.pool._count("restarts")
                self.workers[i] = self.pool._spawn()


_POOL: GradingPool | None = None
_POOL_LOCK = threading.Lock()


# By (worker module, time limit): the python tool's, the task scorers'.
_WORKER_POOLS: dict[tuple[str, float], GradingPool] = {}


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would never be released in the child.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()
    _WORKER_POOLS.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_pool() -> GradingPool:
    """The process-wide pool, created on first use and again in a forked child.

    ``LIT_ALIGN_GRADER_WORKERS`` (default min(2, CPUs)), ``LIT_ALIGN_GRADER_TIMEOUT_S``
    (default 4) and ``LIT_ALIGN_GRADER_BUDGET_S`` (default 300, 0 for none) set the workers per
    call, the per-answer limit and the budget of one batch.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            # In a forked child the inherited pool's pipes belong to the parent: leave them alone.
            _POOL = GradingPool(
                num_workers=int(os.environ.get("LIT_ALIGN_GRADER_WORKERS", "0")) or None,
                timeout_s=float(os.environ.get("LIT_ALIGN_GRADER_TIMEOUT_S", "4")),
                budget_s=float(os.environ.get("LIT_ALIGN_GRADER_BUDGET_S", "300")) or None,
            )
        return _POOL


def worker_pool(
    worker: str, timeout_s: float, failed: Any, num_workers: int | None = None
) -> GradingPool:
    """The process-wide pool of ``worker`` (a module run with ``python -m``) with this time
    limit, created on first use and again in a forked child."""
    with _POOL_LOCK:
        pool = _WORKER_POOLS.get((worker, timeout_s))
        if pool is None or pool._pid != os.getpid():
            pool = GradingPool(
                num_workers=num_workers, timeout_s=timeout_s, worker=worker, failed=failed
            )
            _WORKER_POOLS[worker, timeout_s] = pool
        return pool


def python_pool() -> GradingPool:
    """The process-wide pool of python-tool workers (``lit_align.rewards._python_worker``). Each
    worker enforces a call's own time limit on the child it forks; the pool's limit (60 s) only
    catches a worker that stops answering."""
    return worker_pool(
        "lit_align.rewards._python_worker",
        timeout_s=60.0,
        failed={"output": "", "error": "crash"},
        num_workers=int(os.environ.get("LIT_ALIGN_GRADER_WORKERS", "0")) or None,
    )
