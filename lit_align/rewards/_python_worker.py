"""Python-tool worker: runs model-written code, one forked child per task, never in itself.

Started by :class:`lit_align.rewards.sandbox.GradingPool` as
``python -m lit_align.rewards._python_worker`` (with the pool's scrubbed environment). Protocol:
``{"ready": true}`` once started, then for each ``{"i": id, "code": str, "timeout_s": float,
"memory_mb": int, "max_output": int}`` line one ``{"i": id, "r": {"output": str, "error": kind
or null}}`` line. ``error`` is ``timeout``, ``exception`` (the output ends with its last
traceback line), ``memory``, ``crash`` or ``unavailable`` (no sandbox on this machine); ``output`` holds the first
``max_output`` bytes of stdout and stderr together (more is dropped and said so).

The child is isolated as far as the kernel allows an unprivileged process: new user, network,
mount and PID namespaces (no network interface but loopback), a ``chroot`` into an empty folder
(no file of the machine, no ``/proc``: the trainer's ``/proc/PID/environ`` is out of reach), then
resource limits (address space, CPU seconds, no file writes, no core files), an environment with
nothing but ``PATH``, and a kill of the whole session at the time limit. The worker imports the
modules the code may use (:data:`PRELOADED`: math, fractions, itertools, sympy…) before it forks,
since nothing can be imported from the empty root. Where the kernel refuses user namespaces (some
containers and hardened hosts), no code runs: every call answers ``unavailable`` with the reason,
since limits alone would leave the machine's files and the trainer's environment readable.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource  # imported here: nothing can be imported after the chroot
import select
import signal
import sys
import time

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x00020000,
    0x10000000,
    0x20000000,
    0x40000000,
)
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000
_PR_SET_PDEATHSIG = 1


def _isolate(libc: ctypes.CDLL) -> bool:
    """New namespaces for this process's children; True when they were granted."""
    flags = _CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWPID
    return libc.unshare(flags) == 0


# What model code may import: loaded by the worker before it forks (the child's root is empty).
PRELOADED = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools",
    "collections", "operator", "heapq", "bisect", "re", "json", "random", "string", "sympy",
)  # fmt: skip


def _empty_root(libc: ctypes.CDLL, root: str) -> None:
    """In the new mount namespace: a private mount tree, and ``root`` (an empty folder) as /."""
    libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    os.chroot(root)
    os.chdir("/")


def _address_space() -> int:
    """Bytes of address space this process already maps (the preloaded modules)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit(memory_mb: int, cpu_s: int, mapped: int) -> None:
    limit = mapped + memory_mb * 2**20  # what the code may allocate on top of the interpreter
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # a write past 0 bytes fails
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _run_code(code: str, write_fd: int, task: dict, libc: ctypes.CDLL, root: str) -> None:
    """The sandboxed process (in its namespaces): empty root, limits, then the code; never
    returns."""
    try:
        mapped = _address_space()  # before the root is emptied (no /proc after)
        _empty_root(libc, root)
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        os.environ.clear()
        os.environ["PATH"] = "/usr/bin:/bin"
        _limit(int(task.get("memory_mb", 512)), int(task.get("timeout_s", 5)) + 1, mapped)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = sys.stdout
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        exec(compile(code, "<tool>", "exec"), namespace)  # the sandbox's purpose
        sys.stdout.flush()
        os._exit(0)
    except MemoryError:
        os.write(2, b"\nMemoryError")
        os._exit(3)
    except BaseException as err:  # any failure of model code is reported
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        os.write(2, f"\n{type(err).__name__}: {err}".encode(errors="replace")[:2000])
        os._exit(1)


def run(task: dict, libc: ctypes.CDLL) -> dict:
    """Run one task's code in a sandboxed child; its output and how it ended."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="lit_align_tool_root_")  # the child's empty /
    timeout = float(task.get("timeout_s", 5))
    cap = int(task.get("max_output", 4096))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own session, killed with the worker, then namespaces
        os.close(read_fd)
        os.setsid()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        isolated = _isolate(libc)
        if isolated:  # the new PID namespace applies to children: the code runs as its PID 1
            inner = os.fork()
            if inner != 0:
                _, status = os.waitpid(inner, 0)
                os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if not isolated:
            os.write(write_fd, b"this machine refuses user namespaces (unshare), which the python "
                     b"tool needs to keep model code away from files, network and the trainer")  # fmt: skip
            os._exit(4)
        _run_code(task["code"], write_fd, task, libc, root)
    os.close(write_fd)
    kept, dropped, timed_out = b"", 0, False
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        room = max(cap - len(kept), 0)  # keep the first `cap` bytes, count the rest
        kept, dropped = kept + chunk[:room], dropped + max(len(chunk) - room, 0)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(root, ignore_errors=True)
    text = kept.decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if dropped:
        text += f"\n[output truncated: {dropped} more bytes]"
    error = None
    if timed_out:
        error, text = "timeout", text + f"\n[timed out after {timeout:g} s]"
    elif code == 4:
        error = "unavailable"
    elif code == 3 or text.rstrip().endswith("MemoryError"):
        error = "memory"
    elif code == 1:
        error = "exception"
    elif code != 0:
        error = "crash"
        text += f"\n[killed: exit status {code}]"
    return {"output": text.strip("\n"), "error": error}


def main() -> None:
    import importlib

    for name in PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    libc = ctypes.CDLL(None, use_errno=True)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        out.write(json.dumps({"i": task["i"], "r": run(task, libc)}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
