"""The row every data source yields (:class:`Example`) and the error a malformed row raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DataError", "Example"]


class DataError(ValueError):
    """A malformed data row; the message names the file, the line, the field and the fix."""


@dataclass
class Example:
    """One row of any source.

    Attributes:
        question: the problem text (formatted into a prompt by a template).
        answer: ground truth: a string or a list of acceptable answers ("" when unknown).
        response: the SFT target that follows the prompt, if any.
        prompt: a prompt already formatted (SFT files); when set, templates are not applied.
        metadata: anything else (reference solution, level, subject, source line…).
        transcript: a multi-turn SFT target: chat messages after the prompt, the model's
            (``assistant``) turns and the environment's messages between them (tool results,
            never trained on); ``response`` is then its last turn.
    """

    question: str
    answer: str | list[str] = ""
    response: str | None = None
    prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    transcript: list[dict[str, str]] | None = None
