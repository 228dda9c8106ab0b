"""Prompt templates: r1_zero, question_only, the GSM8K system-prompt chat format, short demo ones
(``demo``: r1-style text; ``demo_chat``: one chat turn, tools named in one line, for tiny models
in tool episodes), and the story prompts (``story``: text that starts the story with its opening line, for tiny
models; ``story_chat``: the request as a chat message).

The r1_zero and question_only texts are the project's copies of the CS336 prompt files
(``lit_align/data/prompts/``). Chat templates go through the tokenizer's own chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any, Literal, get_args

from lit_align.engines.base import SamplingConfig

__all__ = [
    "GSM8K_SYSTEM_PROMPT",
    "TEMPLATE_NAMES",
    "TemplateName",
    "format_prompt",
    "stop_strings_for",
    "with_template_stops",
]

TemplateName = Literal[
    "r1_zero", "question_only", "gsm8k_chat", "demo", "demo_chat", "story", "story_chat"
]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)

# The reasoning/answer XML format, asked for in the system prompt.
GSM8K_SYSTEM_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)

# A short r1-style prompt for tiny CPU demo models (the full r1_zero prompt is ~100 tokens).
DEMO_TEMPLATE = "User: {question}\nAssistant: <think>"


@cache
def _prompt_file(name: str) -> str:
    return resources.files("lit_align.data").joinpath(f"prompts/{name}.prompt").read_text("utf-8")


def _r1_zero(question: str, tokenizer: Any) -> str:
    return _prompt_file("r1_zero").format(question=question)


def _question_only(question: str, tokenizer: Any) -> str:
    return _prompt_file("question_only").format(question=question)


def _demo(question: str, tokenizer: Any) -> str:
    return DEMO_TEMPLATE.format(question=question)


def _demo_chat(question: str, tokenizer: Any, tools: list[dict] | None = None) -> str:
    # Tiny models: the tools named in one short system line, not a JSON-schema block.
    messages = [{"role": "user", "content": question}]
    if tools:
        names = ", ".join(
            f"{t['function']['name']}({', '.join(t['function']['parameters']['properties'])})"
            for t in tools
        )
        messages.insert(0, {"role": "system", "content": f"tools: {names}"})
    return _chat("demo_chat", messages, tokenizer, None)


def _story(question: str, tokenizer: Any) -> str:
    from lit_align.data.creative import STORY_PROMPT

    return STORY_PROMPT.format(opening_line=question) + " " + question


def _story_chat(question: str, tokenizer: Any, tools: list[dict] | None = None) -> str:
    from lit_align.data.creative import STORY_PROMPT

    messages = [{"role": "user", "content": STORY_PROMPT.format(opening_line=question)}]
    return _chat("story_chat", messages, tokenizer, tools)


def _gsm8k_chat(question: str, tokenizer: Any, tools: list[dict] | None = None) -> str:
    messages = [
        {"role": "system", "content": GSM8K_SYSTEM_PROMPT},
        {"role": "user", "content": question},
    ]
    return _chat("gsm8k_chat", messages, tokenizer, tools)


# For chat templates that ignore ``tools=``: the Hermes convention Qwen's own template writes.
_TOOLS_BLOCK = (
    "You may call one or more functions to assist with the user query. The functions:\n"
    "<tools>\n{schemas}\n</tools>\nFor each function call, return a json object with the "
    "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _chat(name: str, messages: list[dict], tokenizer: Any, tools: list[dict] | None) -> str:
    """``messages`` through the tokenizer's chat template, with ``tools`` listed: by the
    template itself (``tools=``) when it renders them, else in a Hermes-style system block."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template {name!r} needs a tokenizer with a chat template")

    def render(msgs: list[dict], **extra: Any) -> str:
        return tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=True, **extra
        )

    if not tools:
        return render(messages)
    with_tools = render(messages, tools=tools)
    if with_tools != render(messages):
        return with_tools
    import json

    block = _TOOLS_BLOCK.format(schemas="\n".join(json.dumps(t) for t in tools))
    if messages[0]["role"] == "system":
        system = {"role": "system", "content": messages[0]["content"] + "\n\n" + block}
        return render([system, *messages[1:]])
    return render([{"role": "system", "content": block}, *messages])


_TEMPLATES: dict[str, Callable[..., str]] = {
    "r1_zero": _r1_zero,
    "question_only": _question_only,
    "gsm8k_chat": _gsm8k_chat,
    "demo": _demo,
    "demo_chat": _demo_chat,
    "story": _story,
    "story_chat": _story_chat,
}

# Where generation stops (the stop string is kept in the output, as vLLM's include_stop_str_in_output keeps it).
_STOPS: dict[str, list[str]] = {
    "r1_zero": ["</answer>"],
    "question_only": [],
    "gsm8k_chat": [],
    "demo": ["</answer>"],
    "demo_chat": ["</answer>"],
    "story": ["\n\n"],  # one paragraph
    "story_chat": [],
}


def format_prompt(
    template: TemplateName,
    question: str,
    tokenizer: Any = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text for ``question`` under ``template``; ``tools`` (JSON schemas) are listed
    through the chat template (chat templates only).

    Raises:
        ValueError: for an unknown template name (the message lists the accepted ones), or
            tools with a template that is not a chat one.
    """
    if template not in _TEMPLATES:
        raise ValueError(f"unknown template {template!r}; accepted values: {', '.join(_TEMPLATES)}")
    if tools and template not in CHAT_TEMPLATES:
        raise ValueError(
            f"template {template!r} cannot list tools: use a chat template "
            f"({', '.join(sorted(CHAT_TEMPLATES))}) with a tool environment"
        )
    if tools:
        return _TEMPLATES[template](question, tokenizer, tools)
    return _TEMPLATES[template](question, tokenizer)


CHAT_TEMPLATES = frozenset(
    {"gsm8k_chat", "demo_chat", "story_chat"}
)  # formatted by the tokenizer's chat template


def end_of_response(template: TemplateName, tokenizer: Any) -> str:
    """The token that ends a response under ``template``: the chat template's end-of-turn token
    after an assistant message (``<|im_end|>`` for Qwen and SmolLM2), else the tokenizer's EOS.

    SFT targets end with it (and it is counted in the loss), so the model learns to stop.
    """
    if template in CHAT_TEMPLATES and getattr(tokenizer, "chat_template", None):
        marker = "\u2063END\u2063"  # text no template produces by itself
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
            tokenize=False,
        )
        after = text.split(marker, 1)[1]
        added = {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}
        ends = [token for token in added if token and after.startswith(token)]
        if ends:
            return max(ends, key=len)
    if not tokenizer.eos_token:
        raise ValueError("the tokenizer has no EOS token to end SFT responses with")
    return tokenizer.eos_token


def stop_strings_for(template: TemplateName) -> list[str]:
    """Default stop strings of a template (``</answer>`` for the r1-style ones)."""
    return list(_STOPS.get(template, []))


def with_template_stops(sampling: SamplingConfig, template: str) -> SamplingConfig:
    """``sampling`` with the template's stop strings when it names none (``stop: None``); the
    one place a task's default stop strings are filled in (training, validation, eval, generate)."""
    if sampling.stop is not None:
        return sampling
    return replace(sampling, stop=stop_strings_for(template))  # type: ignore[arg-type]
