"""The creative-writing prompt set: opening lines written for this project (64 lines)."""

from __future__ import annotations

from importlib import resources

__all__ = ["STORY_PROMPT", "load_opening_lines"]

STORY_PROMPT = "Write a short, one-paragraph story that begins with this opening line:\n{opening_line}\n\nStory:"


def load_opening_lines() -> list[str]:
    """The shipped opening lines, in file order."""
    text = resources.files("lit_align.data").joinpath("assets/opening_lines.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]
