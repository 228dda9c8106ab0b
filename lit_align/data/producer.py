"""Asynchronous rollouts: rounds generated (and graded) ahead of training by one background
thread, each with the weight version that sampled it.

With a lag of L rounds (``max_staleness`` / steps per round), round ``j`` is sampled by the
policy of optimizer step ``version(j) = max(0, j − L) · steps_per_round``: round 0 in-line, rounds
1…L from the initial weights while round 0 trains, then, at the start of each round k, round k+L
from the weights of step k·S. The contents of a round are a function of (seed, j, version(j))
alone, never of thread timing: the engine is synced only while the producer is idle, and a round's
sampling seed depends on its index. This is "one-step-off" asynchrony at L = 1 (verl's one-step-off
trainer; prime-rl's ``max_async_level``; Noukhovitch et al. 2025, "Asynchronous RLHF").

Finished rounds that are not trained yet are part of the DataModule's checkpoint state
(:meth:`AsyncProducer.state_dict` waits for the one in flight), so a resumed run trains exactly
the rounds an uninterrupted one would.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lit_align.rounds import Rollout, Round

__all__ = ["AsyncProducer", "Produced", "round_version", "rounds_ahead"]


def round_version(round_index: int, lag: int, steps_per_round: int) -> int:
    """The optimizer step whose weights sample round ``round_index`` at a lag of ``lag`` rounds."""
    return max(0, round_index - lag) * steps_per_round


def rounds_ahead(round_index: int, lag: int, stop: float) -> list[int]:
    """The rounds after ``round_index`` the producer holds or makes (``round_index`` + 1 …
    + ``lag``), none at or past ``stop`` (the last round + 1)."""
    return [j for j in range(round_index + 1, round_index + lag + 1) if j < stop]


@dataclass
class Produced:
    """A finished round and the optimizer step of the weights that generated it."""

    round: Round
    version: int


class AsyncProducer:
    """One background thread that generates rounds with the engine's current weights.

    The owner (the DataModule) calls :meth:`wait` before it touches the engine (a weight sync,
    validation), :meth:`take` a round when its training starts, and :meth:`submit` the next
    rounds after syncing the engine. One job runs at a time: the engine is shared.

    Args:
        threads: torch intra-op threads of the producer's thread (``torch.set_num_threads`` is
            per thread); None: the process's.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self.ready: dict[int, Produced] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._idle_since: float | None = None  # when the last job ended (None: never ran)

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def submit(self, rounds: list[int], version: int, make: Callable[[int], Round]) -> float:
        """Generate ``rounds`` (in order) with ``make`` in the background, tagged ``version``.

        Returns the seconds the producer sat idle since its previous job ended.
        """
        if self.busy:
            raise RuntimeError("AsyncProducer: a job is in flight; wait() before submitting")
        now = time.perf_counter()
        idle = 0.0 if self._idle_since is None else now - self._idle_since

        def work() -> None:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            try:
                for j in rounds:
                    self.ready[j] = Produced(make(j), version)
            except BaseException as error:  # re-raised in the owner's thread by wait()
                self._error = error
            finally:
                self._idle_since = time.perf_counter()

        self._thread = threading.Thread(target=work, name="lit_align-producer", daemon=True)
        self._thread.start()
        return idle

    def wait(self) -> float:
        """Block until the job in flight ends; re-raise its error. Returns the seconds waited."""
        start = time.perf_counter()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return time.perf_counter() - start

    def take(self, round_index: int) -> Produced | None:
        """The finished round ``round_index`` (None if it was never made), removed."""
        return self.ready.pop(round_index, None)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[int, dict[str, Any]]:
        """Every finished, untrained round (after the job in flight ends), in plain types: the
        samples as they were generated, the records as JSON, the metrics."""
        self.wait()
        return {
            j: {
                "version": p.version,
                "samples": [asdict(s) for s in p.round.samples],
                "records": json.dumps(p.round.records, default=str),
                "metrics": dict(p.round.metrics),
            }
            for j, p in sorted(self.ready.items())
        }

    def load_state_dict(self, state: dict[int, dict[str, Any]]) -> None:
        self.wait()
        self.ready = {
            int(j): Produced(
                Round(
                    [Rollout(**s) for s in saved["samples"]],
                    json.loads(saved["records"]),
                    dict(saved["metrics"]),
                ),
                int(saved["version"]),
            )
            for j, saved in state.items()
        }
