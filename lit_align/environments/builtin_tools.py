"""The tools lit_align ships: ``calculator`` (exact arithmetic, evaluated in this process from
the expression's syntax tree, never ``eval``) and ``python`` (model-written code, run in the
sandbox room's python workers: a forked child per call, namespaces, an empty root, limits).

Each is a typed function with a Google-style docstring: that is its schema for the chat
template (``transformers.utils.get_json_schema``).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

__all__ = ["BUILTIN_TOOLS", "PythonLimits", "ToolFailed", "calculator", "python", "run_python"]

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 1000
_MAX_BITS = 13_000  # ~4,000 decimal digits
_MAX_LENGTH = 500


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > _MAX_EXPONENT):
            raise ValueError(f"exponents must be whole numbers up to {_MAX_EXPONENT}")
        result = _BINARY[type(node.op)](left, right)
        if result.numerator.bit_length() + result.denominator.bit_length() > _MAX_BITS:
            raise ValueError("the result is too large")
        return Fraction(result)
    raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly: + - * / // % ** and parentheses.

    Args:
        expression: the expression, e.g. (12 + 30) * 7 / 3
    """
    if len(expression) > _MAX_LENGTH:
        raise ValueError(f"the expression is longer than {_MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {err.msg}") from None
    value = _value(tree.body)
    if value.denominator == 1:
        return str(value.numerator)
    decimal = float(value)
    return f"{value.numerator}/{value.denominator} (≈ {decimal:.10g})"


@dataclass(frozen=True)
class PythonLimits:
    """Limits of one python tool call (enforced by the sandbox worker on its forked child):
    seconds of wall time, MiB the code may allocate beyond the interpreter, bytes of output."""

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output: int = 2000


def run_python(codes: Sequence[str], limits: PythonLimits = PythonLimits()) -> list[dict[str, Any]]:
    """Run each program in the sandbox, in parallel over the pool's workers: ``output`` (stdout
    and stderr, capped), ``error`` (None, ``timeout``, ``exception``, ``memory``, ``crash``)."""
    from lit_align.rewards.sandbox import python_pool

    tasks = [{"code": code, **asdict(limits)} for code in codes]
    return python_pool().run_many(tasks)


def python(code: str) -> str:
    """Run Python code and return what it prints (stdout and stderr). math, fractions, itertools,
    sympy and a few more standard modules can be imported; no files, no network.

    Args:
        code: the program; print() what you need to see.
    """
    result = run_python([code])[0]
    if result["error"] is not None:
        raise ToolFailed(result["error"], result["output"])
    return result["output"]


class ToolFailed(RuntimeError):
    """A tool call that ran and failed, with the kind of failure (``timeout``, ``exception``…)
    and what it printed, which the model gets to see."""

    def __init__(self, kind: str, output: str) -> None:
        super().__init__(output)
        self.kind, self.output = kind, output


# Tools by the names configs use; ToolEnvironment batches ``python`` calls through run_python.
BUILTIN_TOOLS: dict[str, Any] = {"calculator": calculator, "python": python}
