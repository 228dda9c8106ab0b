"""Grading worker process: reads JSON tasks on stdin, writes one JSON result per task on stdout.

Started by :class:`lit_align.rewards.sandbox.GradingPool` as ``python -m lit_align.rewards._worker``.
It runs under a memory limit, never calls sympy's ``parse_expr`` (an ``eval``), and only parses
LaTeX through math-verify's grammar-based parser. The parent kills it when an answer runs past
the time limit.

Protocol: the worker prints ``{"ready": true}`` once imported, then for each input line
``{"i": id, "a": answer, "g": gold}`` (normalized strings, each parsed as the content of a
``\\boxed{}``), optionally with ``"ra"``/``"rg"`` (a raw answer that is prose or delimited math,
from which math-verify extracts the answer as its own ``parse`` does, LaTeX then plain
expressions; the raw gold, read the same way when delimited, else whole), prints
``{"i": id, "r": true|false}``: true when either reading finds them equal.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys


def _limit_resources() -> None:
    import resource

    mb = int(os.environ.get("LIT_ALIGN_GRADER_MEMORY_MB", "2048"))
    if mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mb * 2**20, mb * 2**20))
    # Nothing here writes files: a write past 0 bytes fails instead of landing on disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


_NUMERIC_LITERAL = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*")


def _numbers_only(real_parse_expr):
    """Wrap sympy's ``parse_expr`` (which ``eval``s) so only plain numeric literals reach it.

    latex2sympy turns NUMBER tokens into ``sympy.Number(text)``, which goes through
    ``sympify`` → ``parse_expr``; nothing else on the LaTeX path needs it.
    """

    def guarded(expr, *args, **kwargs):
        if isinstance(expr, str) and _NUMERIC_LITERAL.fullmatch(expr):
            return real_parse_expr(expr, *args, **kwargs)
        raise RuntimeError("parse_expr refused non-numeric text in the grading sandbox")

    return guarded


def _load_verifier():
    logging.disable(logging.WARNING)  # math-verify warns once that its own timeout is off
    import contextlib

    import sympy.parsing.sympy_parser as sympy_parser
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify import parser as mv_parser

    real_parse_expr = sympy_parser.parse_expr
    guarded = _numbers_only(real_parse_expr)

    @contextlib.contextmanager
    def model_text_guard():
        # While model text is parsed, only numeric literals may reach sympy's eval-based parser.
        # (verify() later works on sympy objects; sympy's own lazy imports need the real one.)
        sympy_parser.parse_expr = mv_parser.parse_expr = guarded
        try:
            yield
        finally:
            sympy_parser.parse_expr = mv_parser.parse_expr = real_parse_expr

    boxed = [LatexExtractionConfig(boxed_match_priority=0)]
    # math-verify's own default reading of free text: LaTeX (boxed first), then expressions.
    # Expressions reach sympy's parser only as numeric literals (the guard above).
    free_text = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    latex = [LatexExtractionConfig(boxed_match_priority=0)]

    def equal(answer: str, gold: str, config: list, gold_config: list | None = None) -> bool:
        with model_text_guard():
            gold_parsed = parse(gold, gold_config or config, parsing_timeout=None)
            answer_parsed = parse(answer, config, parsing_timeout=None)
        if not gold_parsed or not answer_parsed:
            return False
        if _clearly_different_constants(gold_parsed[0], answer_parsed[0]):
            return False
        return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))

    def check(answer: str, gold: str, raw_answer: str | None, raw_gold: str | None) -> bool:
        if answer and gold and equal("\\boxed{" + answer + "}", "\\boxed{" + gold + "}", boxed):
            return True
        if not raw_answer or raw_gold is None:
            return False
        # The answer is prose or delimited math (the parent checked): extract as math-verify
        # does. A gold with its own delimiters is read the same way; a bare gold whole.
        if any(d in raw_gold for d in ("$", "\\(", "\\[", "\\boxed", "\\fbox")):
            return equal(raw_answer, raw_gold, free_text, latex)
        return equal(raw_answer, "\\boxed{" + raw_gold + "}", free_text, boxed)

    return check


def _clearly_different_constants(a: object, b: object) -> bool:
    """True when both are numeric constant expressions whose values differ by far more than
    math-verify's rounding tolerance; skips sympy's costly simplification for most wrong answers.
    Anything else (symbols, sets, relations, matrices, evaluation trouble) returns False.
    """
    import sympy

    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if a.free_symbols or b.free_symbols:
        return False
    try:
        va, vb = complex(a.evalf(30)), complex(b.evalf(30))
    except (TypeError, ValueError, ArithmeticError):
        return False
    if not all(map(lambda z: abs(z) < 1e15 and z == z, (va, vb))):
        return False
    return abs(va - vb) > 1e-3 * max(1.0, abs(vb))


def main() -> None:
    check = _load_verifier()
    _limit_resources()  # after the imports, which may write bytecode caches
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        try:
            result = check(task["a"], task["g"], task.get("ra"), task.get("rg"))
        except (Exception, RecursionError, MemoryError):
            result = False
        out.write(json.dumps({"i": task["i"], "r": result}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
