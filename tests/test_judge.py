"""LLM judge: score parsing, a real OpenAI-compatible HTTP server on 127.0.0.1, discrimination."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from lit_align.data.creative import STORY_PROMPT, load_opening_lines
from lit_align.engines.openai_api import APIError
from lit_align.rewards import JudgeEvaluator, LocalJudge, OpenAIChatJudge, parse_scores
from lit_align.rewards.judge import discrimination_metrics

C = ("creativity", "coherence", "engagement")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"creativity": 4, "coherence": 5, "engagement": 3}', (4, 5, 3)),
        ('Sure! ```json\n{"Creativity": "2", "Coherence": 3, "Engagement": 4}\n```', (2, 3, 4)),
        ("Creativity: 4\nCoherence: 2\nEngagement: 5", (4, 2, 5)),
        ("**Creativity**: 3/5, **Coherence** - 4/5, **Engagement** = five", (3, 4, 5)),
        ("Score: 4", (4, 4, 4)),
        ("I'd give it 3/5 overall.", (3, 3, 3)),
        ("Verdict: **2**", (2, 2, 2)),
        ("four", (4, 4, 4)),
        ('{"score": 1}', (1, 1, 1)),
        ("Creativity: 4, the rest is fine. Overall rating: 3", (4, 3, 3)),
    ],
)
def test_parse_scores_table(reply, expected):
    assert parse_scores(reply, C) == dict(zip(C, map(float, expected), strict=True))


@pytest.mark.parametrize(
    "reply", [None, "", "I cannot rate this.", "Score: 9", '{"creativity": 0}', "Score: -1"]
)
def test_unparseable_replies(reply):
    assert parse_scores(reply, C) is None


class _JudgeServer:
    """A small OpenAI-compatible /chat/completions endpoint serving prepared replies."""

    def __init__(self, replies, fail_first: int = 0, delay_s: float = 0.0):
        self.replies, self.fail_first, self.delay_s = list(replies), fail_first, delay_s
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    owner.headers.append(dict(self.headers))
                    n = len(owner.requests)
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                time.sleep(owner.delay_s)
                # The request stops counting as active before its reply is sent: once the client
                # has the reply it may send the next request at once, before this thread returns.
                with owner.lock:
                    owner.active -= 1
                if n <= owner.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                prompt = body["messages"][-1]["content"]
                # Reply chosen by the story's marker, so concurrency cannot reorder answers.
                reply = next((r for key, r in owner.replies if key in prompt), "no idea")
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


REPLIES = [
    ("STORY-A", '{"creativity": 5, "coherence": 4, "engagement": 3}'),
    ("STORY-B", "Creativity: 1\nCoherence: 2\nEngagement: 3"),
    ("STORY-C", "Score: 4"),
    ("STORY-D", "I refuse."),
]


def test_judge_over_http_scores_parses_and_counts_fallbacks(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    with _JudgeServer(REPLIES, delay_s=0.05) as server:
        backend = OpenAIChatJudge(
            server.url,
            "judge-model",
            api_key_env="TEST_JUDGE_KEY",
            max_concurrency=2,
            backoff_s=0.01,
        )
        ev = JudgeEvaluator(backend, group_size=2, fallback_score=1.0)
        stories = ["STORY-A", "STORY-B", "STORY-C", "STORY-D"]
        scores, metrics = ev.compute_rewards(["p"] * 4, stories, ["It was a dark night."] * 4)
    assert scores.tolist() == [[5, 4, 3], [1, 2, 3], [4, 4, 4], [1, 1, 1]]
    torch.testing.assert_close(ev.total(scores), torch.tensor([4.0, 2.0, 4.0, 1.0]))
    assert metrics["judge_unparseable"] == 1.0
    assert (
        metrics["judge_hist_4"] == 2
        and metrics["judge_hist_2"] == 1
        and metrics["judge_hist_1"] == 1
    )
    # Groups (4, 2) and (4, 1): stds sqrt(2) and sqrt(4.5); no zero-variance group.
    assert metrics["judge_within_group_std"] == pytest.approx((2**0.5 + 4.5**0.5) / 2)
    assert metrics["judge_zero_variance_group_frac"] == 0.0
    assert server.max_active <= 2  # the concurrency limit held
    assert all(h.get("Authorization") == "Bearer sk-test-123" for h in server.headers)
    assert server.requests[0]["model"] == "judge-model"
    assert "It was a dark night." in server.requests[0]["messages"][-1]["content"]
    assert "sk-test-123" not in repr(vars(backend))  # the key is read per request, never stored


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("code", [302, 307])
def test_judge_never_sends_the_key_across_a_redirect(code, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    seen: list[dict] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _record(self):
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _record

    other = _serve(Elsewhere)
    target = f"http://127.0.0.1:{other.server_address[1]}/steal"

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.send_response(code)  # urllib turns a 302 POST into a GET, headers included
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _serve(Redirect)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        backend = OpenAIChatJudge(url, "m", api_key_env="TEST_JUDGE_KEY", max_retries=2)
        with pytest.raises(APIError, match=f"redirect to {target}; it is refused"):
            backend.complete(["STORY-A"])  # every request would be redirected: stop the run
    finally:
        for s in (server, other):
            s.shutdown()
            s.server_close()
    assert seen == []  # nothing, and so no key, reached the other origin
    assert backend.stats["requests"] == 1  # and it was not retried


def test_judge_retries_server_errors_then_succeeds():
    with _JudgeServer(REPLIES, fail_first=2) as server:
        backend = OpenAIChatJudge(
            server.url, "m", api_key_env=None, max_retries=3, backoff_s=0.01, max_concurrency=1
        )
        assert backend.complete(["STORY-C"]) == ["Score: 4"]
    assert backend.stats["retries"] == 2 and backend.stats["failures"] == 0
    assert "Authorization" not in server.headers[0]


def test_judge_gives_up_after_retries_and_times_out():
    with _JudgeServer(REPLIES, fail_first=100) as server:
        backend = OpenAIChatJudge(server.url, "m", api_key_env=None, max_retries=1, backoff_s=0.01)
        assert backend.complete(["STORY-A"]) == [None]
        assert backend.stats["failures"] == 1
    with _JudgeServer(REPLIES, delay_s=1.0) as server:
        backend = OpenAIChatJudge(server.url, "m", api_key_env=None, max_retries=0, timeout_s=0.2)
        start = time.monotonic()
        assert backend.complete(["STORY-A"]) == [None]
        assert time.monotonic() - start < 1.0


def test_local_judge_and_zero_variance_groups():
    ev = JudgeEvaluator(LocalJudge(lambda prompts: ["Score: 3"] * len(prompts)), group_size=2)
    scores, metrics = ev.compute_rewards(["p"] * 4, ["s"] * 4, ["line"] * 4)
    assert scores.unique().tolist() == [3.0]
    assert (
        metrics["judge_zero_variance_group_frac"] == 1.0
        and metrics["judge_within_group_std"] == 0.0
    )
    assert discrimination_metrics(torch.tensor([1.0, 5.0]), 2)["judge_hist_5"] == 1.0


def test_creative_dataset_is_shipped():
    lines = load_opening_lines()
    assert 50 <= len(lines) <= 100
    assert len(set(lines)) == len(lines)
    assert "{opening_line}" in STORY_PROMPT
