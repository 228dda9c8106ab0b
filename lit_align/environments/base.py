"""The environment protocol: what answers the model between its turns.

An episode is one sample of one prompt: the model writes a turn, the environment replies (tool
results, a user message) or says it is done, and so on up to ``max_turns``. The reward still
comes from the task's evaluator, on the whole episode, as for a single turn. Environments are
pure functions of (example, the model's turns so far): nothing to save in a checkpoint, and a
resumed round replays exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from lit_align.engines.base import SamplingConfig

__all__ = ["Environment", "Reply", "SingleTurn", "tool_list", "with_environment_stops"]


@dataclass
class Reply:
    """The environment's answer to the model's latest turn.

    Attributes:
        messages: chat messages it adds (``{"role": "tool", "name": …, "content": …}``); none:
            the episode is done.
        events: what happened, counted (``tool_calls``, ``tool_errors/timeout``…), summed into
            the round's metrics.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)

    @property
    def done(self) -> bool:
        return not self.messages


@runtime_checkable
class Environment(Protocol):
    """Replies to the model's turns, for many episodes at once (so tools can run in parallel).

    ``respond`` gets, per live episode, its example (the data row: question, answer…) and the
    model's turn texts so far (the last one is new), and returns one :class:`Reply` each.
    ``tool_schemas`` go to the prompt's chat template (``tools=``); ``stop`` strings end a model
    turn where the environment should answer (``</tool_call>``), besides the task's own.
    """

    max_turns: int
    tool_schemas: Sequence[dict[str, Any]]
    stop: Sequence[str]

    def respond(self, episodes: Sequence[tuple[Any, Sequence[str]]]) -> list[Reply]: ...


@dataclass(frozen=True)
class SingleTurn:
    """One prompt, one completion: done after the model's first turn (the default)."""

    max_turns: int = 1
    tool_schemas: tuple[dict[str, Any], ...] = ()
    stop: tuple[str, ...] = ()

    def respond(self, episodes: Sequence[tuple[Any, Sequence[str]]]) -> list[Reply]:
        return [Reply() for _ in episodes]


def tool_list(environment: Environment | None) -> list[dict[str, Any]] | None:
    """The environment's tool schemas, for the prompt's chat template (None: it has none)."""
    tools = list(environment.tool_schemas) if environment is not None else []
    return tools or None


def with_environment_stops(
    sampling: SamplingConfig, environment: Environment | None
) -> SamplingConfig:
    """``sampling`` whose turns also end at the environment's stop strings (a tool call)."""
    extra = [s for s in (environment.stop if environment is not None else ()) if s]
    if not extra:
        return sampling
    return replace(sampling, stop=[*(sampling.stop or []), *extra])
