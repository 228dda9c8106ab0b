"""Tools (lit_align.environments): parsing the model's calls, the calculator, and the python tool
in the sandbox room's workers: a tool that hangs, raises, prints 10 MB, reads the environment,
the trainer's /proc entry or the network, or writes files, answers with an error message; the
round goes on and nothing leaks."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from lit_align.environments import (
    SingleTurn,
    ToolEnvironment,
    calculator,
    parse_tool_calls,
)
from lit_align.environments.builtin_tools import PythonLimits, run_python


def _call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_tool_calls_are_parsed_and_malformed_ones_say_why():
    text = (
        "Let me compute. "
        + _call("calculator", expression="6*7")
        + " and <tool_call>{not json}</tool_call>"
        + ' <tool_call>{"arguments": {}}</tool_call>'
        + ' <tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>'
        + " <tool_call>{'name': 'calculator'"
    )
    calls = parse_tool_calls(text)
    assert [c.name for c in calls] == ["calculator", "", "", "python", ""]
    assert calls[0].arguments == {"expression": "6*7"} and calls[0].error is None
    assert "not JSON" in calls[1].error
    assert '"name"' in calls[2].error
    assert calls[3].arguments == {"code": "print(1)"}  # arguments written as a JSON string
    assert "not closed" in calls[4].error
    assert parse_tool_calls("The answer is 42.") == []


@pytest.mark.parametrize(
    ("expression", "want"),
    [
        ("(12 + 30) * 7 / 3", "98"),
        ("1/3", "1/3 (≈ 0.3333333333)"),
        ("-2**10 % 7", str(-(2**10) % 7)),
        ("123456789 * 987654321", str(123456789 * 987654321)),
    ],
)
def test_the_calculator_is_exact(expression, want):
    assert calculator(expression) == want


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').getcwd()", "unsupported syntax"),
        ("2 ** 100000", "exponents must be whole numbers up to 1000"),
        ("9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999 * 9 ** 999", "too large"),
        ("1 +", "not an arithmetic expression"),
        ("x + 1", "unsupported syntax"),
    ],
)
def test_the_calculator_refuses_anything_but_arithmetic(expression, message):
    with pytest.raises(ValueError, match=message):
        calculator(expression)


def test_the_environment_answers_each_call_and_counts_what_went_wrong():
    env = ToolEnvironment(tools=["calculator"], max_calls_per_turn=2)
    assert [s["function"]["name"] for s in env.tool_schemas] == ["calculator"]
    assert "expression" in env.tool_schemas[0]["function"]["parameters"]["properties"]
    episodes = [
        (None, ["The answer is 5."]),  # no call: done
        (None, ["first turn", _call("calculator", expression="6*7")]),
        (None, [_call("search", query="x") + _call("calculator", wrong=1)]),
        (None, [_call("calculator", expression="1") * 3]),  # one call over the limit
        (None, [_call("calculator", expression="1/0")]),
    ]
    replies = env.respond(episodes)
    assert replies[0].done and not replies[0].events
    assert replies[1].messages == [{"role": "tool", "name": "calculator", "content": "42"}]
    assert "error (unknown_tool): no tool 'search'" in replies[2].messages[0]["content"]
    assert "error (bad_arguments)" in replies[2].messages[1]["content"]
    assert [m["content"] for m in replies[3].messages][:2] == ["1", "1"]
    assert replies[3].messages[2]["content"].startswith("error (too_many_calls)")
    assert replies[4].messages[0]["content"].startswith("error (exception): ZeroDivisionError")
    events = sum((r.events for r in replies), start=type(replies[0].events)())
    assert events["tool_calls"] == 7
    assert events["tool_errors/unknown_tool"] == 1 and events["tool_errors/bad_arguments"] == 1
    assert events["tool_errors/too_many_calls"] == 1 and events["tool_errors/exception"] == 1


def test_single_turn_is_done_at_once():
    assert SingleTurn().respond([(None, ["anything"])])[0].done


def test_a_slow_in_process_tool_answers_timeout():
    def wait(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: how long.
        """
        time.sleep(seconds)
        return "done"

    env = ToolEnvironment(tools=[wait], tool_timeout_s=0.2)
    start = time.perf_counter()
    reply = env.respond([(None, [_call("wait", seconds=2)])])[0]
    assert time.perf_counter() - start < 1.5
    assert reply.messages[0]["content"].startswith("error (timeout)")
    assert reply.events["tool_errors/timeout"] == 1


# ---------------------------------------------------------------------- the python sandbox


def _sandbox_available() -> bool:
    result = run_python(["print('ok')"], PythonLimits(timeout_s=5))[0]
    return result["error"] != "unavailable"


@pytest.fixture(scope="module")
def sandbox():
    if not _sandbox_available():
        pytest.skip("this machine refuses user namespaces: the python tool answers unavailable")


def test_python_runs_code_and_reports_exceptions(sandbox):
    ok, error, imports = run_python(
        [
            "import math\nprint(math.factorial(20))",
            "x = 1\nraise ValueError('bad input ' + str(x))",
            "import sympy\nprint(sympy.factorint(360))",
        ]
    )
    assert ok == {"output": "2432902008176640000", "error": None}
    assert error["error"] == "exception" and error["output"].endswith("ValueError: bad input 1")
    assert imports["output"] == "{2: 3, 3: 2, 5: 1}"


def test_a_hanging_huge_or_greedy_program_is_stopped_and_the_batch_goes_on(sandbox):
    limits = PythonLimits(timeout_s=1.0, memory_mb=256, max_output=1000)
    start = time.perf_counter()
    hang, flood, greedy, fine = run_python(
        [
            "while True: pass",
            "print('x' * 10_000_000)",
            "a = bytearray(2 * 1024**3)",
            "print(6 * 7)",
        ],
        limits,
    )
    assert time.perf_counter() - start < 20
    assert hang["error"] == "timeout" and "timed out after 1 s" in hang["output"]
    assert flood["error"] is None and len(flood["output"]) < 1100
    assert "output truncated: 9999001 more bytes" in flood["output"]
    assert greedy["error"] == "memory"
    assert fine == {"output": "42", "error": None}


def test_model_code_sees_no_secret_no_files_no_network_and_writes_nothing(
    sandbox, monkeypatch, tmp_path
):
    monkeypatch.setenv("LIT_ALIGN_TEST_SECRET", "sk-do-not-leak")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    target = tmp_path / "written.txt"
    try:
        env_read, proc_read, files, network, write = run_python(
            [
                "import os\nprint(sorted(os.environ))",
                f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
                "import os\nprint(os.listdir('/'))",
                f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
                f"open({str(target)!r}, 'w').write('x')",
            ]
        )
    finally:
        server.close()
    assert env_read == {"output": "['PATH']", "error": None}
    assert proc_read["error"] == "exception" and "sk-do-not-leak" not in proc_read["output"]
    assert files == {"output": "[]", "error": None}  # an empty root
    assert network["error"] == "exception"
    assert write["error"] == "exception" and not target.exists()


def test_python_calls_through_the_environment(sandbox):
    env = ToolEnvironment(tools=["python"], tool_timeout_s=1.0)
    replies = env.respond(
        [
            (None, [_call("python", code="print(sum(range(10)))")]),
            (None, [_call("python", code="while True: pass")]),
            (None, [_call("python", source="print(1)")]),
        ]
    )
    assert replies[0].messages[0]["content"] == "45"
    assert replies[1].messages[0]["content"].startswith("error (timeout)")
    assert replies[2].events["tool_errors/bad_arguments"] == 1


def test_the_prompt_lists_the_tools_through_the_chat_template(tiny_tokenizer):
    from pathlib import Path

    from transformers import AutoTokenizer

    from lit_align.data.templates import format_prompt

    env = ToolEnvironment(tools=["calculator"])
    # The tiny model's ChatML template ignores tools=: a Hermes-style block in the system turn.
    text = format_prompt("gsm8k_chat", "What is 6 * 7?", tiny_tokenizer, env.tool_schemas)
    assert "<tools>" in text and '"name": "calculator"' in text and "<tool_call>" in text
    assert text.index("<tools>") < text.index("What is 6 * 7?")
    # Qwen's own template renders them itself.
    qwen_dir = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "qwen3"
    if qwen_dir.exists():
        qwen = AutoTokenizer.from_pretrained(qwen_dir)
        text = format_prompt("gsm8k_chat", "What is 6 * 7?", qwen, env.tool_schemas)
        assert "<tools>" in text and "calculator" in text and "<tool_call>" in text
    with pytest.raises(ValueError, match="cannot list tools: use a chat template"):
        format_prompt("r1_zero", "q", tiny_tokenizer, env.tool_schemas)
    assert env.stop == ["</tool_call>"]
