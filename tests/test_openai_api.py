"""The OpenAI-compatible text engine against a real HTTP server on 127.0.0.1 (tests/openai_stub.py):
request bodies, n samples, stop strings, the key read per request, retries, timeouts, refusals."""

from __future__ import annotations

import socket
import time

import pytest

from lit_align.engines import APIError, OpenAICompatibleEngine, RequestFailed, SamplingConfig
from lit_align.engines.text import TextSample
from tests.openai_stub import StubServer, prompt_of


def _echo(body, i):
    return f"{prompt_of(body)}#{i}"


def _engine(url, **kwargs):
    kwargs.setdefault("backoff_s", 0.01)
    return OpenAICompatibleEngine(url, "stub-model", **kwargs)


def test_chat_samples_n_per_prompt_with_the_sampling_asked_for(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-first")
    sampling = SamplingConfig(n=3, temperature=0.7, top_p=0.9, max_new_tokens=50, seed=5)
    with (
        StubServer(_echo, key=None) as server,
        _engine(server.url, api_key_env="STUB_KEY") as engine,
    ):
        convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Q2"}]
        results = engine.generate_texts(["Q1", convo], sampling)
        monkeypatch.setenv("STUB_KEY", "sk-second")  # read at request time, not at construction
        engine.generate_texts(["Q3"], SamplingConfig(n=1, temperature=0.0))
    assert results == [
        [TextSample(f"Q1#{i}", "stop") for i in range(3)],
        [TextSample(f"Q2#{i}", "stop") for i in range(3)],
    ]
    body = next(b for b in server.bodies if prompt_of(b) == "Q2")
    assert body["messages"] == convo
    assert {k: body[k] for k in ("model", "n", "temperature", "top_p", "max_tokens", "seed")} == {
        "model": "stub-model",
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 50,
        "seed": 5,
    }
    assert "stop" not in body and "min_tokens" not in body  # only what the user set
    auth = [h["Authorization"] for h in server.headers]
    assert auth == ["Bearer sk-first"] * 2 + ["Bearer sk-second"]
    assert "sk-" not in repr(engine) and "sk-" not in repr(vars(engine))


def test_completions_keep_the_stop_string_that_matched_and_reuse_one_connection():
    ports = []
    with StubServer(lambda body, i: " 4 </think> <answer> 4", stop_reason="</answer>") as server:
        handler = server.server.RequestHandlerClass
        original = handler.do_POST

        def record(self):
            ports.append(self.client_address[1])
            original(self)

        handler.do_POST = record
        with _engine(server.url, endpoint="completions", max_concurrency=1) as engine:
            sampling = SamplingConfig(n=1, temperature=0.0, stop=["</answer>"])
            results = [engine.generate_texts([f"q{k}"], sampling) for k in range(4)]
    assert results[0] == [[TextSample(" 4 </think> <answer> 4</answer>", "stop", tokens=7)]]
    assert server.bodies[0]["prompt"] == "q0" and server.bodies[0]["stop"] == ["</answer>"]
    assert len(set(ports)) == 1  # four requests, one kept-alive connection


def test_429_and_500_are_retried_with_backoff_then_succeed():
    with StubServer(_echo, script=[429, 500, 503]) as server, _engine(server.url) as engine:
        start = time.monotonic()
        results = engine.generate_texts(["Q"], SamplingConfig(n=1, temperature=0.0))
    assert results == [[TextSample("Q#0", "stop", tokens=7)]]
    assert engine.stats == {"requests": 4, "retries": 3, "failures": 0}
    assert time.monotonic() - start >= 0.05  # the 429's Retry-After was waited for


def test_a_prompt_that_keeps_failing_is_reported_not_dropped():
    script = [500] * 3 + [200]
    with StubServer(_echo, script=script) as server, _engine(server.url, max_retries=2) as engine:
        first = engine.generate_texts(["Q"], SamplingConfig(temperature=0.0))
        second = engine.generate_texts(["Q"], SamplingConfig(temperature=0.0))
    assert isinstance(first[0], RequestFailed) and "HTTP 500: scripted 500" in first[0].reason
    assert second == [[TextSample("Q#0", "stop", tokens=7)]]
    assert engine.stats == {"requests": 4, "retries": 2, "failures": 1}


def test_a_400_fails_its_prompt_at_once_and_the_others_go_on():
    with (
        StubServer(_echo, script=[400]) as server,
        _engine(server.url, max_concurrency=1) as engine,
    ):
        results = engine.generate_texts(["A", "B"], SamplingConfig(temperature=0.0))
    assert isinstance(results[0], RequestFailed) and "HTTP 400" in results[0].reason
    assert results[1] == [TextSample("B#0", "stop", tokens=7)]
    assert engine.stats["retries"] == 0


@pytest.mark.parametrize("step", ["malformed", "slow"])
def test_malformed_json_and_timeouts_are_retried(step):
    with (
        StubServer(_echo, script=[step], slow_s=1.0) as server,
        _engine(server.url, timeout_s=0.3) as engine,
    ):
        start = time.monotonic()
        results = engine.generate_texts(["Q"], SamplingConfig(temperature=0.0))
    assert results == [[TextSample("Q#0", "stop", tokens=7)]]
    assert engine.stats["retries"] == 1
    assert time.monotonic() - start < 1.0  # the slow reply was not waited for


def test_concurrency_is_limited():
    with (
        StubServer(_echo, delay_s=0.1) as server,
        _engine(server.url, max_concurrency=3) as engine,
    ):
        results = engine.generate_texts([f"Q{k}" for k in range(9)], SamplingConfig(temperature=0))
    assert [r[0].text for r in results] == [f"Q{k}#0" for k in range(9)]  # in prompt order
    assert server.max_active == 3


def test_a_refused_key_stops_everything_and_names_the_variable_not_the_key(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-wrong")
    with (
        StubServer(_echo, key="sk-right") as server,
        _engine(server.url, api_key_env="STUB_KEY", max_concurrency=1) as engine,
    ):
        with pytest.raises(APIError, match=r"refused the API key \(401") as err:
            engine.generate_texts(["A", "B", "C"], SamplingConfig(temperature=0))
        with pytest.raises(APIError, match=r"\$STUB_KEY"):
            engine.check()
    assert "sk-wrong" not in str(err.value)
    assert len(server.bodies) == 1  # not retried, and the other prompts were not sent


def test_check_names_what_is_wrong_url_model_or_server():
    with StubServer(_echo, models=("served-a", "served-b")) as server:
        with pytest.raises(
            APIError, match=r"model 'stub-model' is not served .* served-a, served-b"
        ):
            _engine(server.url).check()
        with pytest.raises(APIError, match=r"answered 404 .*API root"):
            _engine(server.url.removesuffix("/v1")).check()
        assert OpenAICompatibleEngine(server.url, "served-b").check() == ["served-a", "served-b"]
        with pytest.raises(APIError, match="does not exist"):
            _engine(server.url).generate_texts(["Q"], SamplingConfig(temperature=0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # a port nothing listens on
    with pytest.raises(APIError, match=r"cannot reach .*is the server running"):
        _engine(f"http://127.0.0.1:{closed}/v1").check()
    with pytest.raises(ValueError, match="not an http"):
        _engine("127.0.0.1:8000/v1")
