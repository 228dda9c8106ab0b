"""Answer extraction and normalization: pure string work, linear time, no sympy.

Normalization follows the MATH conventions (Hendrycks et al. 2021; the Minerva/PRM800K graders):
last ``\\boxed{}``/``\\fbox{}`` content, ``\\text{}`` and units, ``$``, thousands separators,
trailing periods, ``x = …`` prefixes, ``\\dfrac``/``\\tfrac``, percent and degree signs.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = [
    "MAX_ANSWER_CHARS",
    "is_delimited",
    "is_free_text",
    "last_boxed",
    "normalize_answer",
    "parse_number",
]

# No real MATH/GSM8K answer is longer; longer "answers" are rejected before any parsing.
MAX_ANSWER_CHARS = 1000

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` or ``\\fbox{…}`` (``\\boxed 2`` too), or None.

    Braces are matched by a linear scan, so deeply nested or unbalanced input costs O(n).
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    i = text.index("\\", start) + 1
    while i < len(text) and text[i].isalpha():
        i += 1
    if i < len(text) and text[i] == " ":  # "\boxed 2": the next space-free token
        match = re.match(r"\s*([^\s$]+)", text[i:])
        return match.group(1) if match else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced


def _unwrap_command(s: str, command: str) -> str:
    """Replace ``\\command{X}`` by ``X`` (one brace level, repeated until none is left)."""
    pattern = re.compile(re.escape(command) + r"\s*\{([^{}]*)\}")
    previous = None
    while previous != s:
        previous, s = s, pattern.sub(r"\1", s)
    return s


def _fix_fracs(s: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\frac1{2}`` → ``\\frac{1}{2}``."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)


_UNIT_WORDS = (
    r"(?:units?|cm|mm|km|m|meters?|centimeters?|inches|inch|feet|foot|ft|yards?|miles?|"
    r"degrees?|dollars?|cents?|hours?|minutes?|seconds?|days?|weeks?|years?|sq|square|cubic|"
    r"pounds?|lbs?|ounces?|oz|grams?|kg|liters?|gallons?|mph|people|students|points?|"
    r"percent(?:age)?|pct)"
)
_NUMBER_WITH_UNITS = re.compile(
    r"^(-?[\d.,]+|\\frac\{[^{}]*\}\{[^{}]*\})\s*(?:" + _UNIT_WORDS + r"\b[\w\s^{}]*)$"
)
_VAR_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_THOUSANDS = re.compile(r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$")  # "0,111" is a decimal comma


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer, for the exact-match fast path and for the parser.

    Examples: ``\\boxed{\\dfrac{1}{2}}`` → ``\\frac{1}{2}``; ``$1{,}000$`` → ``1000``;
    ``x = 5.`` → ``5``; ``5 \\text{ cm}^2`` → ``5``; ``50\\%`` → ``50``; ``30^\\circ`` → ``30``.
    """
    s = answer.replace("\x00", "").strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("\n", " ").replace("\\!", "").replace("{,}", ",")
    for spacing in ("\\,", "\\;", "\\:", "\\quad", "\\qquad", "~"):
        s = s.replace(spacing, " ")
    for wrapper in ("\\left", "\\right", "\\displaystyle"):
        s = s.replace(wrapper, "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for command in ("\\text", "\\textbf", "\\mbox", "\\mathrm", "\\textrm", "\\mathbf"):
        s = _unwrap_command(s, command)
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "°"):
        s = s.replace(degree, "")
    s = s.replace("\\%", "").replace("%", "").strip()
    s = _VAR_PREFIX.sub("", s).strip()
    unit_match = _NUMBER_WITH_UNITS.match(s)
    if unit_match:
        s = unit_match.group(1)
    s = s.rstrip(".").strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _fix_fracs(s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    # "32, 349" is a pair, not 32349: a space after a comma between digits survives (one space),
    # so neither the exact match nor math-verify reads it as a thousands separator.
    s = re.sub(r"(\d),\s+(?=\d)", r"\1," + "\x00", s)  # NUL was stripped above: a placeholder
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    if s.startswith("."):
        s = "0" + s
    s = re.sub(r"^(-?)\.(\d)", r"\g<1>0.\2", s)
    return s


_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")
_SLASH_FRACTION = re.compile(r"^([-+]?\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")


def parse_number(normalized: str) -> Fraction | None:
    """Exact value of a plain number, ``a/b`` or ``\\frac{a}{b}`` (normalized form), else None.

    Digit strings are capped at 100 characters, so no huge integer is ever built.
    """
    if len(normalized) > 100:
        return None
    if _PLAIN_NUMBER.match(normalized):
        return Fraction(normalized)
    match = _SLASH_FRACTION.match(normalized)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2)))
    match = _LATEX_FRACTION.match(normalized)
    if match and int(match.group(3)) != 0:
        value = Fraction(int(match.group(2)), int(match.group(3)))
        return -value if match.group(1) else value
    return None


_DELIMITERS = ("$", "\\(", "\\[", "\\boxed", "\\fbox")
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")  # a word, not a LaTeX command


def is_delimited(text: str) -> bool:
    """Whether ``text`` marks its math (``$…$``, ``\\(…\\)``, ``\\[…\\]``, ``\\boxed{}``)."""
    return any(d in text for d in _DELIMITERS)


def is_free_text(answer: str) -> bool:
    """Whether an answer is prose or delimited math from which the answer must be extracted,
    rather than one bare expression (or one ``\\boxed{}`` around it), which is graded whole.

    A bare expression is never searched for a sub-expression: ``\\frac{1}{2}+1`` must not grade
    as ``\\frac{1}{2}``.
    """
    text = answer.strip()
    boxed = last_boxed(text)
    if boxed is not None and text.replace(" ", "") == "\\boxed{" + boxed.replace(" ", "") + "}":
        text = boxed
    return is_delimited(text) or _WORD.search(text) is not None
