"""A deterministic judge behind a real OpenAI-compatible HTTP endpoint on 127.0.0.1.

For CPU demos and for trying the judge tooling, where no LLM judge is at hand: it reads the story
out of :data:`~lit_align.rewards.judge.DEFAULT_RUBRIC`'s prompt and replies with JSON scores from a
rule, through the same client, retries and parsing a hosted judge goes through. Rules:

- ``vocabulary``: 1 + 4 × the fraction of the story's words that are common English words (the
  CPU demo's judge: a tiny policy can learn it);
- ``constant``: 3 for every story (a judge that does not discriminate);
- ``random``: uniform 1–5, whatever the story (a judge that is noise);
- ``length``: 1 + 4 × min(1, words / 100) (a judge that rewards length alone).
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

__all__ = ["RULES", "RuleJudgeServer", "ServedRuleJudge"]

_COMMON = frozenset(
    [
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "is",
        "it",
        "that",
        "for",
        "on",
        "with",
        "as",
        "was",
        "he",
        "she",
        "they",
        "we",
        "you",
        "his",
        "her",
        "their",
        "at",
        "by",
        "from",
        "then",
        "there",
        "one",
        "all",
        "more",
        "each",
        "than",
        "what",
        "how",
        "if",
    ]
)


def _vocabulary(story: str, rng: random.Random) -> float:
    words = re.findall(r"[A-Za-z']+", story.lower())
    return 1 + 4 * (sum(w in _COMMON for w in words) / len(words) if words else 0.0)


RULES: dict[str, Callable[[str, random.Random], float]] = {
    "vocabulary": _vocabulary,
    "constant": lambda story, rng: 3.0,
    "random": lambda story, rng: float(rng.randint(1, 5)),
    "length": lambda story, rng: 1 + 4 * min(1.0, len(story.split()) / 100),
}


def _story(prompt: str) -> str:
    """The story of a judge prompt (between ``Story:`` and the reply instruction)."""
    match = re.search(r"Story:\n(.*?)\n\nReply with JSON", prompt, flags=re.DOTALL)
    return match.group(1) if match else prompt


class RuleJudgeServer:
    """Serves ``/v1/models`` and ``/v1/chat/completions`` for a rule on 127.0.0.1.

    Args:
        rule: one of :data:`RULES`.
        criteria: the keys of the JSON reply (each gets the rule's score, 2 decimals).
        seed: the ``random`` rule's seed.
    """

    def __init__(
        self,
        rule: Literal["vocabulary", "constant", "random", "length"] = "vocabulary",
        criteria: tuple[str, ...] = ("creativity", "coherence", "engagement"),
        seed: int = 0,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown judge rule {rule!r}; accepted values: {', '.join(RULES)}")
        self.rule, self.criteria, self.seed = rule, criteria, seed
        self.calls: dict[str, int] = {}  # per story: how often it was judged
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.model = f"rule-{rule}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _score(self, story: str) -> float:
        # The random rule draws from a stream per (seed, story, call), so concurrent requests
        # arriving in any order get the same scores from run to run.
        with self.lock:
            call = self.calls.get(story, 0)
            self.calls[story] = call + 1
        return RULES[self.rule](story, random.Random(f"{self.seed}:{call}:{story}"))

    def reply(self, prompt: str) -> str:
        if '{"ranking"' in prompt:  # a ranked-scoring prompt: order its stories by the rule
            body = prompt.split("\n\nReply with JSON only", 1)[0]
            stories = re.findall(r"Story ([A-Z]):\n(.*?)(?=\n\nStory [A-Z]:\n|\Z)", body, re.DOTALL)
            scored = [(self._score(text), name) for name, text in stories]
            order = [name for _, name in sorted(scored, key=lambda x: -x[0])]  # ties: label order
            return json.dumps({"ranking": order})
        value = self._score(_story(prompt))
        return json.dumps(dict.fromkeys(self.criteria, round(value, 2)))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                self._send(200, {"object": "list", "data": [{"id": owner.model}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                text = owner.reply(body["messages"][-1]["content"])
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    for i in range(body.get("n", 1))
                ]
                self._send(200, {"choices": choices, "usage": {"completion_tokens": 20}})

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ServedRuleJudge:
    """A judge backend that starts a :class:`RuleJudgeServer` and talks to it over HTTP with
    :class:`~lit_align.rewards.judge.OpenAIChatJudge` (the path a hosted judge takes).

    Args:
        rule: see :data:`RULES`.
        criteria: the reply's keys (match the evaluator's criteria).
        seed: the ``random`` rule's seed.
        max_concurrency: requests in flight.
    """

    def __init__(
        self,
        rule: Literal["vocabulary", "constant", "random", "length"] = "vocabulary",
        criteria: tuple[str, ...] = ("creativity", "coherence", "engagement"),
        seed: int = 0,
        max_concurrency: int = 8,
    ) -> None:
        from lit_align.rewards.judge import OpenAIChatJudge

        self.server = RuleJudgeServer(rule, tuple(criteria), seed)
        self.client = OpenAIChatJudge(
            self.server.url, self.server.model, api_key_env=None, max_concurrency=max_concurrency
        )

    @property
    def last_tokens(self) -> int:
        return self.client.last_tokens

    def complete(
        self, prompts: Sequence[str], json_schema: dict[str, Any] | None = None
    ) -> list[str | None]:
        return self.client.complete(prompts, json_schema=json_schema)
