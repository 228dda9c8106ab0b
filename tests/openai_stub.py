"""A small OpenAI-compatible HTTP server (standard library only) on 127.0.0.1, for the paths a
real server rarely takes: 429 with Retry-After, 500s, slow replies, malformed JSON, refused keys.

Replies are chosen by a function of the request body, so concurrency cannot reorder them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = Callable[[dict[str, Any], int], str]  # (request body, sample index) -> text


def prompt_of(body: dict[str, Any]) -> str:
    """The user text of a chat or completions request."""
    if "messages" in body:
        return body["messages"][-1]["content"]
    return body["prompt"]


class StubServer:
    """Serves ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``.

    Args:
        reply: the text of each choice.
        models: names listed by ``/v1/models``.
        key: when set, requests without ``Authorization: Bearer KEY`` get 401.
        script: statuses to answer the first requests with, in order (``"malformed"``: a 200
            whose body is not JSON; ``"slow"``: sleep ``slow_s`` first, then answer normally).
        delay_s: every completion request sleeps this long (to see concurrency).
        slow_s: how long a ``"slow"`` request sleeps.
        stop_reason: what the choices report as ``stop_reason`` (vLLM names the stop string).
        logprobs: text -> the chat ``logprobs.content`` list to send with it.
    """

    def __init__(
        self,
        reply: Reply,
        models: tuple[str, ...] = ("stub-model",),
        key: str | None = None,
        script: list[int | str] | None = None,
        delay_s: float = 0.0,
        slow_s: float = 2.0,
        stop_reason: str | None = None,
        logprobs: Callable[[str], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.reply, self.models, self.key = reply, models, key
        self.script = list(script or [])
        self.delay_s, self.slow_s, self.stop_reason = delay_s, slow_s, stop_reason
        self.logprobs = logprobs
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _authorized(self) -> bool:
                if owner.key is None or self.headers.get("Authorization") == f"Bearer {owner.key}":
                    return True
                self._send(401, json.dumps({"error": {"message": "Incorrect API key"}}).encode())
                return False

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                if self.path != "/v1/models":
                    self._send(404, b'{"detail": "Not Found"}')
                    return
                data = [{"id": m, "object": "model"} for m in owner.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.bodies.append(body)
                    owner.headers.append(dict(self.headers))
                    step = owner.script.pop(0) if owner.script else 200
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                try:
                    self._answer(body, step)
                finally:
                    with owner.lock:
                        owner.active -= 1

            def _answer(self, body: dict[str, Any], step: int | str) -> None:
                if not self._authorized():
                    return
                time.sleep(owner.delay_s + (owner.slow_s if step == "slow" else 0.0))
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._send(404, b'{"detail": "Not Found"}')
                    return
                if body.get("model") not in owner.models:
                    message = f"The model `{body.get('model')}` does not exist."
                    self._send(404, json.dumps({"error": {"message": message}}).encode())
                    return
                if step == "malformed":
                    self._send(200, b'{"choices": [{"text": "cut off')
                    return
                if isinstance(step, int) and step != 200:
                    retry = {"Retry-After": "0.05"} if step == 429 else None
                    error = json.dumps({"error": {"message": f"scripted {step}"}}).encode()
                    self._send(step, error, retry)
                    return
                chat = "messages" in body
                choices = []
                for i in range(body.get("n", 1)):
                    text = owner.reply(body, i)
                    choice: dict[str, Any] = {"index": i, "finish_reason": "stop"}
                    choice.update(
                        {"message": {"role": "assistant", "content": text}}
                        if chat
                        else {"text": text}
                    )
                    if owner.stop_reason is not None:
                        choice["stop_reason"] = owner.stop_reason
                    if owner.logprobs is not None and body.get("logprobs"):
                        choice["logprobs"] = {"content": owner.logprobs(text)}
                    choices.append(choice)
                usage = {"completion_tokens": 7 * len(choices)}
                self._send(200, json.dumps({"choices": choices, "usage": usage}).encode())

        return Handler

    def __enter__(self) -> StubServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
