"""A text engine for OpenAI-compatible endpoints: ``/v1/chat/completions`` and ``/v1/completions``
(OpenAI, vLLM's ``api_server``, SGLang, llama.cpp, …). It serves ``lit_align generate`` and the
LLM judge.

HTTP goes through ``httpx2`` (pydantic's maintained line of httpx, installed with
``huggingface_hub`` anyway) rather than urllib: one pooled client keeps connections alive across
requests (urllib opens a new TCP/TLS connection per request), is safe to share between the worker
threads, separates connect and read timeouts, and never follows a redirect unless asked (a redirect
would carry the API key to whatever origin it names).

Failures are sorted by what retrying can do. Connection errors, timeouts, 408, 429 (``Retry-After``
honoured) and 5xx, and malformed replies are retried with exponential backoff and jitter; a prompt
that still fails becomes a :class:`~lit_align.engines.text.RequestFailed`. A refused key (401/403),
an unknown model or URL (404) and redirects would fail every request alike: they raise
:class:`APIError` at once, with the fix. The key is read from its environment variable for each
request and never stored, logged or saved.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from lit_align.engines.base import SamplingConfig
from lit_align.engines.text import RequestFailed, TextPrompt, TextResult, TextSample

__all__ = ["APIError", "OpenAICompatibleEngine"]

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]
_PATHS: dict[str, str] = {"chat": "/chat/completions", "completions": "/completions"}
_RETRY_STATUS = frozenset({408, 409, 425, 429})


class APIError(RuntimeError):
    """The endpoint refused in a way no retry fixes (wrong URL, model or key; a redirect)."""


def _detail(response: Any) -> str:
    """The server's own error message, short (OpenAI and vLLM nest it under ``error``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(body)[:300]


class OpenAICompatibleEngine:
    """Samples texts from an OpenAI-compatible HTTP endpoint.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the served model's name.
        endpoint: ``chat`` (``/chat/completions``; prompts are conversations, a plain string
            becomes one user message) or ``completions`` (``/completions``; raw text prompts).
        api_key_env: the environment variable holding the API key, read for each request
            (None: no key; local servers need none).
        max_concurrency: requests in flight at once.
        max_retries: retries of a retryable failure before the prompt counts as failed.
        timeout_s: read timeout of one request (a long generation needs a generous one).
        connect_timeout_s: time to open a connection.
        backoff_s: first retry delay; it doubles each retry, with jitter.
        extra_body: more fields for every request body (e.g. ``{"top_k": 20}`` for vLLM).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        endpoint: Endpoint = "chat",
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 10.0,
        backoff_s: float = 1.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import httpx2

        if endpoint not in _PATHS:
            raise ValueError(f"unknown endpoint {endpoint!r}; accepted values: chat, completions")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url {base_url!r} is not an http(s) URL; give the API root, e.g. "
                "http://127.0.0.1:8000/v1"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint: Endpoint = endpoint
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.extra_body = dict(extra_body or {})
        self.stats = {"requests": 0, "retries": 0, "failures": 0}
        self._lock = threading.Lock()
        self._fatal: APIError | None = None
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx2.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            follow_redirects=False,
        )
        if api_key_env and not os.environ.get(api_key_env):
            log.warning(
                "environment variable %s is not set; requests carry no API key", api_key_env
            )

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleEngine(base_url={self.base_url!r}, model={self.model!r}, "
            f"endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r})"
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> OpenAICompatibleEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _refusal(self, status: int, response: Any, url: str) -> APIError | None:
        """An :class:`APIError` for replies that every request would get alike, else None."""
        if 300 <= status < 400:
            target = response.headers.get("location", "?")
            return APIError(
                f"{url} answered {status}, a redirect to {target}; it is refused (credentials "
                "stay with the origin you named): set base_url to the final address"
            )
        if status in (401, 403):
            where = f"${self.api_key_env}" if self.api_key_env else "no key (api_key_env unset)"
            return APIError(
                f"{url} refused the API key ({status}: {_detail(response)}); the key comes from "
                f"{where}: set it, or name the right variable with --api_key_env"
            )
        if status == 404:
            return APIError(
                f"{url} answered 404 ({_detail(response)}): either base_url is wrong (it is the "
                f"API root, usually ending in /v1) or the server does not serve model "
                f"{self.model!r} (see {self.base_url}/models)"
            )
        return None

    def check(self) -> list[str]:
        """Ask ``/models`` before any work: the URL answers, the key is accepted, the model served.

        Returns:
            The names the server serves.

        Raises:
            APIError: with the fix, when any of the three is wrong.
        """
        import httpx2

        url = f"{self.base_url}/models"
        try:
            response = self._client.get(url, headers=self._headers())
        except httpx2.HTTPError as err:
            raise APIError(
                f"cannot reach {url} ({type(err).__name__}: {err}); is the server running, and is "
                "base_url its API root (e.g. http://127.0.0.1:8000/v1)?"
            ) from err
        refusal = self._refusal(response.status_code, response, url)
        if refusal is not None:
            raise refusal
        if response.status_code != 200:
            raise APIError(f"{url} answered {response.status_code}: {_detail(response)}")
        try:
            served = [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError) as err:
            raise APIError(
                f"{url} did not answer an OpenAI model list: {response.text[:200]}"
            ) from err
        if served and self.model not in served:
            raise APIError(
                f"model {self.model!r} is not served at {self.base_url}; it serves: "
                f"{', '.join(served)}. Pass one of them as --model"
            )
        return served

    def _body(
        self, prompt: TextPrompt, sampling: SamplingConfig, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model}
        if self.endpoint == "chat":
            body["messages"] = (
                [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            )
        elif isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            raise ValueError(
                "the completions endpoint takes text prompts, not conversations; use "
                "endpoint chat, or a text template"
            )
        body.update(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
        )
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.min_new_tokens:
            body["min_tokens"] = sampling.min_new_tokens  # vLLM's extension
        body.update(self.extra_body)
        body.update(extra or {})
        return body

    def _samples(self, reply: Any) -> list[TextSample]:
        choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
        samples = []
        for choice in choices:
            text = choice["message"].get("content") if self.endpoint == "chat" else choice["text"]
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise ValueError(f"a choice's text is {type(text).__name__}, not a string")
            matched = choice.get("stop_reason")  # vLLM names the stop string that matched
            if isinstance(matched, str) and not text.endswith(matched):
                text += matched  # keep it, as the local engines do
            sample = TextSample(text, str(choice.get("finish_reason") or "stop"))
            content = (choice.get("logprobs") or {}).get("content")
            if isinstance(content, list):  # chat: [{token, logprob, top_logprobs: [...]}, ...]
                sample.top_logprobs = [
                    (
                        str(item["token"]),
                        {
                            **{
                                str(a["token"]): float(a["logprob"])
                                for a in item.get("top_logprobs") or []
                            },
                            str(item["token"]): float(item["logprob"]),
                        },
                    )
                    for item in content
                ]
            samples.append(sample)
        usage = reply.get("usage") or {}
        if len(samples) == 1 and isinstance(usage.get("completion_tokens"), int):
            samples[0].tokens = usage["completion_tokens"]
        return samples

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _request(
        self, prompt: TextPrompt, sampling: SamplingConfig, extra: dict[str, Any] | None = None
    ) -> TextResult:
        import httpx2

        url = self.base_url + _PATHS[self.endpoint]
        body = json.dumps(self._body(prompt, sampling, extra))
        reason = "not sent"
        for attempt in range(self.max_retries + 1):
            if self._fatal is not None:
                return RequestFailed(f"not sent: {self._fatal}")
            self._count("requests")
            wait = self.backoff_s * 2**attempt * (0.5 + random.random())
            try:
                response = self._client.post(url, content=body, headers=self._headers())
                status = response.status_code
                refusal = self._refusal(status, response, url)
                if refusal is not None:
                    self._fatal = refusal
                    raise refusal
                if status == 200:
                    samples = self._samples(response.json())
                    if len(samples) != sampling.n:
                        raise ValueError(f"{len(samples)} choices for n={sampling.n}")
                    return samples
                reason = f"HTTP {status}: {_detail(response)}"
                if status not in _RETRY_STATUS and status < 500:
                    break  # this prompt is refused (e.g. 400: too long); retrying will not help
                if status == 429:
                    retry_after = response.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait = min(float(retry_after), 60.0)
            except httpx2.HTTPError as err:
                reason = f"{type(err).__name__}: {err}"
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
                reason = f"malformed reply ({type(err).__name__}: {err})"
            log.warning("%s: %s (attempt %d of %d)", url, reason, attempt + 1, self.max_retries + 1)
            if attempt < self.max_retries:
                self._count("retries")
                time.sleep(wait)
        self._count("failures")
        return RequestFailed(reason)

    def generate_texts(
        self,
        prompts: Sequence[TextPrompt],
        sampling: SamplingConfig,
        extra_body: dict[str, Any] | None = None,
    ) -> list[TextResult]:
        """``sampling.n`` texts per prompt, ``max_concurrency`` requests at a time; ``extra_body``
        adds fields to these requests' bodies (e.g. ``response_format``).

        Raises:
            APIError: when the endpoint refuses the key, the model or the URL (the remaining
                requests are not sent).
        """
        self._fatal = None
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            results = list(pool.map(lambda p: self._request(p, sampling, extra_body), prompts))
        if self._fatal is not None:
            raise self._fatal
        return results
