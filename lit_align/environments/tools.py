"""Tool use: :class:`ToolEnvironment` answers the model's tool calls with tool messages.

Tools are typed Python callables with Google-style docstrings; their JSON schemas
(``transformers.utils.get_json_schema``) go to the chat template's ``tools=``, which renders them
into the system prompt the model was trained with (Qwen, Hermes…). The model calls a tool by
writing ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (the Qwen/Hermes convention);
each call gets one ``{"role": "tool", …}`` message back. A turn without a call ends the episode.

Nothing a model writes can stop a round: a malformed call, an unknown tool, wrong arguments, an
exception, a timeout, memory or output past the limits all become a tool message that says so
(and a counted event: ``tool_errors/<kind>``). ``python`` runs in the sandbox room's workers
(:func:`~lit_align.environments.builtin_tools.run_python`), all of a turn's calls at once;
other tools run in this process on threads, with the same time limit on the answer (a tool
past it is reported as a timeout; its thread is left to finish).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from lit_align.environments.base import Reply
from lit_align.environments.builtin_tools import (
    BUILTIN_TOOLS,
    PythonLimits,
    ToolFailed,
    run_python,
)

__all__ = ["TOOL_ERROR_KINDS", "ToolCall", "ToolEnvironment", "parse_tool_calls", "resolve_tool"]

_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)
# What can go wrong with a call, each counted as tool_errors/<kind>.
TOOL_ERROR_KINDS = (
    "malformed", "unknown_tool", "bad_arguments", "too_many_calls", "exception", "timeout",
    "memory", "crash", "unavailable",
)  # fmt: skip


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool's name and its arguments, or why it could not be read."""

    name: str = ""
    arguments: dict[str, Any] | None = None
    error: str | None = None  # set for a malformed call


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{json}</tool_call>`` in ``text``, in order (an unclosed last one too)."""
    calls = []
    for match in _CALL.finditer(text):
        body, closed = match.group(1).strip(), bool(match.group(2))
        if not closed:
            calls.append(ToolCall(error="the <tool_call> is not closed with </tool_call>"))
            continue
        try:
            data = json.loads(body)
        except json.JSONDecodeError as err:
            calls.append(ToolCall(error=f"the call is not JSON ({err.msg} at {err.pos})"))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            calls.append(ToolCall(error='expected {"name": …, "arguments": {…}}'))
            continue
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        if not isinstance(arguments, dict):
            calls.append(ToolCall(name=data["name"], error="arguments must be a JSON object"))
            continue
        calls.append(ToolCall(data["name"], arguments))
    return calls


def resolve_tool(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """A tool from a built-in name (``calculator``, ``python``), an import path
    (``package.module:function``) or a callable."""
    if callable(spec):
        return spec
    if spec in BUILTIN_TOOLS:
        return BUILTIN_TOOLS[spec]
    module, sep, name = spec.partition(":")
    if not sep:
        raise ValueError(
            f"unknown tool {spec!r}: use a built-in ({', '.join(BUILTIN_TOOLS)}) or "
            "package.module:function"
        )
    return getattr(importlib.import_module(module), name)


class ToolEnvironment:
    """Episodes in which the model may call tools between its turns.

    Args:
        tools: built-in names (``calculator``, ``python``), ``package.module:function`` import
            paths, or callables (typed, with a Google-style docstring: their schema).
        max_turns: model turns per episode at most (the episode ends earlier on a turn without
            a tool call).
        max_calls_per_turn: calls answered per turn; more are answered with an error.
        tool_timeout_s: time limit of one call (the python tool's child is killed at it).
        tool_memory_mb: address-space limit of a python call.
        max_output_chars: characters of a tool's answer the model sees (the rest is cut and
            the cut said).
    """

    def __init__(
        self,
        tools: Sequence[str | Callable[..., Any]] = ("calculator", "python"),
        max_turns: int = 4,
        max_calls_per_turn: int = 4,
        tool_timeout_s: float = 5.0,
        tool_memory_mb: int = 512,
        max_output_chars: int = 2000,
    ) -> None:
        from transformers.utils import get_json_schema

        if max_turns < 1 or max_calls_per_turn < 1 or tool_timeout_s <= 0:
            raise ValueError(
                "ToolEnvironment: max_turns and max_calls_per_turn must be >= 1 and "
                f"tool_timeout_s > 0, got {max_turns}, {max_calls_per_turn}, {tool_timeout_s}"
            )
        self.tools = {fn.__name__: fn for fn in map(resolve_tool, tools)}
        self.tool_schemas = [get_json_schema(fn) for fn in self.tools.values()]
        self.stop = ["</tool_call>"]  # the turn ends where the call does: the tool answers
        self.max_turns = max_turns
        self.max_calls_per_turn = max_calls_per_turn
        self.timeout_s = tool_timeout_s
        self.max_output_chars = max_output_chars
        self.python_limits = PythonLimits(tool_timeout_s, tool_memory_mb, max_output_chars)
        self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lit_align_tool")

    def __repr__(self) -> str:
        return (
            f"ToolEnvironment(tools={list(self.tools)}, max_turns={self.max_turns}, "
            f"max_calls_per_turn={self.max_calls_per_turn}, tool_timeout_s={self.timeout_s:g})"
        )

    def respond(self, episodes: Sequence[tuple[Any, Sequence[str]]]) -> list[Reply]:
        """Answer the calls in each episode's latest turn; a turn without one ends its episode."""
        replies = []
        pending: list[tuple[Reply, int, ToolCall]] = []  # calls to run, by reply and slot
        for _, turns in episodes:
            reply = Reply()
            for call in parse_tool_calls(turns[-1]):
                reply.events["tool_calls"] += 1
                slot = len(reply.messages)
                reply.messages.append({"role": "tool", "name": call.name, "content": ""})
                problem = self._check(call, slot)
                if problem is None:
                    pending.append((reply, slot, call))
                else:
                    self._answer(reply, slot, problem[0], problem[1])
            replies.append(reply)
        self._run(pending)
        return replies

    def _check(self, call: ToolCall, slot: int) -> tuple[str, str] | None:
        """(error kind, text) when ``call`` cannot run, else None."""
        if call.error is not None:
            return "malformed", call.error
        if slot >= self.max_calls_per_turn:
            return "too_many_calls", f"at most {self.max_calls_per_turn} calls per turn"
        tool = self.tools.get(call.name)
        if tool is None:
            return "unknown_tool", f"no tool {call.name!r}; tools: {', '.join(self.tools)}"
        try:
            inspect.signature(tool).bind(**(call.arguments or {}))
        except TypeError as err:
            return "bad_arguments", str(err)
        return None

    def _run(self, pending: list[tuple[Reply, int, ToolCall]]) -> None:
        sandboxed = [self.tools[c.name] is BUILTIN_TOOLS["python"] for _, _, c in pending]
        python = [p for p, sand in zip(pending, sandboxed, strict=True) if sand]
        others = [p for p, sand in zip(pending, sandboxed, strict=True) if not sand]
        codes = [str((c.arguments or {}).get("code", "")) for _, _, c in python]
        for (reply, slot, _), result in zip(
            python, run_python(codes, self.python_limits), strict=True
        ):
            self._answer(reply, slot, result["error"], result["output"])
        futures = [
            self._threads.submit(self.tools[c.name], **(c.arguments or {})) for _, _, c in others
        ]
        for (reply, slot, _), future in zip(others, futures, strict=True):
            try:
                self._answer(reply, slot, None, str(future.result(timeout=self.timeout_s)))
            except FutureTimeout:
                future.cancel()
                self._answer(reply, slot, "timeout", f"no answer within {self.timeout_s:g} s")
            except ToolFailed as err:
                self._answer(reply, slot, err.kind, err.output)
            except Exception as err:  # a tool's failure is the model's to see
                self._answer(reply, slot, "exception", f"{type(err).__name__}: {err}")

    def _answer(self, reply: Reply, slot: int, error: str | None, text: str) -> None:
        if len(text) > self.max_output_chars:
            cut = len(text) - self.max_output_chars
            text = text[: self.max_output_chars] + f"\n[{cut} more characters cut]"
        if error is not None:
            reply.events[f"tool_errors/{error}"] += 1
            text = f"error ({error}): {text}" if text else f"error ({error})"
        reply.messages[slot]["content"] = text


def count_events(replies: Sequence[Reply]) -> Counter[str]:
    """The events of many replies, summed."""
    total: Counter[str] = Counter()
    for reply in replies:
        total.update(reply.events)
    return total
