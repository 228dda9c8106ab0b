"""Environments: what answers the model between its turns (tools, a user), one episode per
sample. :class:`SingleTurn` (the default: one prompt, one completion) and
:class:`ToolEnvironment` (tool calls answered with tool messages; ``calculator`` and a sandboxed
``python`` built in)."""

from lit_align.environments.base import Environment, Reply, SingleTurn
from lit_align.environments.builtin_tools import PythonLimits, ToolFailed, calculator, python
from lit_align.environments.tools import ToolCall, ToolEnvironment, parse_tool_calls

__all__ = [
    "Environment",
    "PythonLimits",
    "Reply",
    "SingleTurn",
    "ToolCall",
    "ToolEnvironment",
    "ToolFailed",
    "calculator",
    "parse_tool_calls",
    "python",
]
