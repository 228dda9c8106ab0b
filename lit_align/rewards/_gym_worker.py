"""reasoning-gym scoring worker: reads JSON tasks on stdin, writes one JSON result per task.

Started by :class:`lit_align.rewards.sandbox.GradingPool` as
``python -m lit_align.rewards._gym_worker``, with a scrubbed environment and the graders' memory
limit; the parent kills it when one answer runs past the time limit.

Protocol: ``{"ready": true}`` once reasoning-gym is imported, then for each
``{"i": id, "task": name, "answer": text, "entry": {...}}`` line, ``{"i": id, "r": score}``
(the task's ``score_answer(answer, entry)`` in [0, 1]; 0.0 when the scorer fails).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from functools import cache
from typing import Any

from lit_align.rewards._worker import _limit_resources


@cache
def _scorer(task: str) -> Any:
    from reasoning_gym import get_score_answer_fn

    return get_score_answer_fn(task)


def score(task: str, answer: str, entry: dict[str, Any]) -> float:
    """The task's score of ``answer``, clipped to [0, 1]; 0.0 when the scorer fails."""
    try:  # a scorer that prints must not write into the protocol's stream
        with contextlib.redirect_stdout(sys.stderr):
            value = float(_scorer(task)(answer, entry))
    except (Exception, RecursionError, MemoryError):
        return 0.0
    return min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0


def main() -> None:
    import reasoning_gym  # noqa: F401  (imported before the limits: it loads data files)

    _limit_resources()
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        # The scorer's task: the entry's own (a composite task's subtask), else the source's.
        name = (task["entry"].get("metadata") or {}).get("source_dataset") or task["task"]
        result = score(name, task["answer"], task["entry"])
        out.write(json.dumps({"i": task["i"], "r": result}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
