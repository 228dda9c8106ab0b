"""Episodes, token in and token out: every turn continues from the exact token ids of the
transcript so far, and a sample leaves as one sequence with a mask of the tokens the model
sampled.

Turn 1 is the engine's usual call (``n`` samples per prompt, the round's seed), so a
single-turn episode is exactly today's completion. Each later turn sends every live episode's
ids (prompt + sampled tokens + environment tokens) to the engine in one call, each episode with
a seed of its own. The model's tokens are never decoded and encoded again: only the environment's
messages are tokenized, rendered by the chat template after an assistant turn (which also closes
the model's turn and opens its next one), and they get mask 0 and log-prob 0.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lit_align.engines.base import Completion, RolloutEngine, SamplingConfig
from lit_align.environments.base import Environment, SingleTurn
from lit_align.metrics import (
    ENVIRONMENT_TOKENS,
    EPISODE_TRUNCATED_FRAC,
    TOOL_CALL_RATE,
    TOOL_CALLS,
    TOOL_ERRORS,
    TURNS,
)

__all__ = ["Episode", "episode_metrics", "render_reply", "reply_text", "run_episodes"]

# Text no chat template produces by itself: where the model's turn sits in a rendering.
_TURN = "\u2063TURN\u2063"


@dataclass
class Episode:
    """One sample of one prompt, over all its turns.

    Attributes:
        prompt_index: which prompt it answers.
        token_ids: everything after the prompt, in order: sampled and environment tokens.
        sampled: 1 where the model sampled the token, 0 where the environment added it.
        log_probs: the engine's log-probs of sampled tokens; 0.0 at environment tokens.
        entropy: the engine's entropy at the sampled tokens (where it reports one), in order;
            not aligned with ``token_ids`` (environment tokens have none).
        turns: the model's turn texts.
        replies: the environment's messages after each turn but the last.
        finish_reason: ``stop`` (the environment was done) or ``length`` (a turn hit its
            token budget, or the episode hit ``max_total_tokens`` or ``max_turns``).
        events: counted tool events (``tool_calls``, ``tool_errors/<kind>``).
    """

    prompt_index: int
    token_ids: list[int] = field(default_factory=list)
    sampled: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    replies: list[list[dict[str, str]]] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] = "stop"
    events: Counter[str] = field(default_factory=Counter)

    @property
    def environment_tokens(self) -> int:
        return len(self.sampled) - sum(self.sampled)

    def add_turn(self, completion: Completion) -> None:
        self.token_ids += completion.token_ids
        self.sampled += [1] * len(completion.token_ids)
        self.log_probs += list(completion.log_probs)
        self.entropy += list(completion.entropy)
        self.turns.append(completion.text)
        self.finish_reason = completion.finish_reason

    def add_reply(self, messages: list[dict[str, str]], token_ids: list[int]) -> None:
        self.replies.append(messages)
        self.token_ids += token_ids
        self.sampled += [0] * len(token_ids)
        self.log_probs += [0.0] * len(token_ids)

    def transcript(self) -> list[dict[str, str]]:
        """The episode as chat messages after the prompt: each model turn as an ``assistant``
        message, each environment reply's messages after the turn it answers."""
        messages: list[dict[str, str]] = []
        for k, turn in enumerate(self.turns):
            messages.append({"role": "assistant", "content": turn})
            if k < len(self.replies):
                messages += self.replies[k]
        return messages

    def completion(self) -> Completion:
        """The episode as one completion for grading: the text is the model's last turn, its
        final answer (a tool's output never counts as the model's answer); ``token_ids`` and
        log-probs span the whole episode (``sampled`` says which are the model's)."""
        return Completion(
            self.prompt_index,
            self.token_ids,
            self.turns[-1],
            self.log_probs,
            self.entropy,
            self.finish_reason,
        )


def render_reply(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the environment's ``messages`` as the tokenizer's chat template renders
    them right after an assistant turn: the end of that turn, the messages, and the opening of
    the next assistant turn (e.g. ``<|im_end|>\\n<|im_start|>user\\n<tool_response>…``)."""
    return tokenizer(reply_text(tokenizer, messages), add_special_tokens=False)["input_ids"]


def reply_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text :func:`render_reply` tokenizes (SFT on transcripts tokenizes the same)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "multi-turn episodes render the environment's messages with the tokenizer's chat "
            "template, and this tokenizer has none: use a chat model (or set chat_template)"
        )
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _TURN}]
    text = tokenizer.apply_chat_template(
        conversation + messages, tokenize=False, add_generation_prompt=True
    )
    return text.split(_TURN, 1)[1]


def _turn_seed(seed: int, turn: int, sample: int) -> int:
    key = repr(("turn", seed, turn, sample)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def run_episodes(
    engine: RolloutEngine,
    prompt_ids: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    environment: Environment | None = None,
    examples: Sequence[Any] | None = None,
    tokenizer: Any = None,
    max_total_tokens: int | None = None,
) -> list[Episode]:
    """``sampling.n`` episodes per prompt, prompt-major.

    Args:
        engine: any rollout engine; later turns pass it one seed per episode.
        prompt_ids: the prompts' token ids.
        sampling: turn 1's sampling (``max_new_tokens`` is each turn's budget).
        environment: what answers between turns (default :class:`SingleTurn`).
        examples: the data rows of the prompts, handed to the environment.
        tokenizer: renders the environment's messages, and decodes a turn cut short by
            ``max_total_tokens`` (multi-turn only).
        max_total_tokens: tokens after the prompt, sampled and environment ones together; an
            episode that reaches it is cut there and ends as ``length``. None: no limit but
            ``max_turns`` turns of ``max_new_tokens`` and what the environment adds.
    """
    environment = environment or SingleTurn()
    budget = max_total_tokens if max_total_tokens is not None else sys.maxsize
    first = engine.generate(prompt_ids, sampling)
    episodes = [Episode(c.prompt_index) for c in first]
    for episode, completion in zip(episodes, first, strict=True):
        _add_turn(episode, completion, budget, tokenizer)
    live = [e for e in episodes if e.finish_reason == "stop"]
    for turn in range(1, environment.max_turns + 1):
        if not live:
            break
        rows = [examples[e.prompt_index] if examples is not None else None for e in live]
        replies = environment.respond([(row, e.turns) for row, e in zip(rows, live, strict=True)])
        going = []
        for episode, reply in zip(live, replies, strict=True):
            episode.events.update(reply.events)
            if reply.done:
                continue
            if turn == environment.max_turns:  # a call the model may not see answered
                episode.finish_reason = "length"
                continue
            room = budget - len(episode.token_ids)  # cut at the budget (the episode ends)
            episode.add_reply(reply.messages, render_reply(tokenizer, reply.messages)[:room])
            if len(episode.token_ids) >= budget:
                episode.finish_reason = "length"
                continue
            going.append(episode)
        if going:  # one engine call for every live episode, each with a seed of its own
            sample = {id(e): k for k, e in enumerate(episodes)}
            ids = [list(prompt_ids[e.prompt_index]) + e.token_ids for e in going]
            seeds = [_turn_seed(sampling.seed, turn, sample[id(e)]) for e in going]
            again = replace(sampling, n=1, min_new_tokens=0)
            for episode, completion in zip(
                going, engine.generate(ids, again, seeds=seeds), strict=True
            ):
                _add_turn(episode, completion, budget, tokenizer)
        live = [e for e in going if e.finish_reason == "stop"]
    return episodes


def _add_turn(episode: Episode, completion: Completion, budget: int, tokenizer: Any) -> None:
    """Append a turn, cut at the episode's token budget (the cut turn ends it as ``length``)."""
    room = budget - len(episode.token_ids)
    if len(completion.token_ids) > room:
        ids = completion.token_ids[:room]
        text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else ""
        completion = replace(
            completion,
            token_ids=ids,
            text=text,
            log_probs=completion.log_probs[:room],
            entropy=completion.entropy[:room],
            finish_reason="length",
        )
    episode.add_turn(completion)


def episode_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """A round's episode metrics: turns, tool calls and environment tokens per episode, the
    fraction of episodes that called a tool and that were truncated, and the count of each kind
    of tool error (``rollout/tool_errors/<kind>``)."""
    count = max(len(episodes), 1)
    events: Counter[str] = Counter()
    for e in episodes:
        events.update(e.events)
    metrics = {
        TURNS: sum(len(e.turns) for e in episodes) / count,
        TOOL_CALLS: events["tool_calls"] / count,
        TOOL_CALL_RATE: sum(e.events["tool_calls"] > 0 for e in episodes) / count,
        ENVIRONMENT_TOKENS: sum(e.environment_tokens for e in episodes) / count,
        EPISODE_TRUNCATED_FRAC: sum(e.finish_reason == "length" for e in episodes) / count,
    }
    for key, value in sorted(events.items()):
        if key.startswith("tool_errors/"):
            metrics[f"{TOOL_ERRORS}/{key.removeprefix('tool_errors/')}"] = float(value)
    return metrics
