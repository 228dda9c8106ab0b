"""The grading sandbox: adversarial answers return False fast and execute nothing, from any thread
or process; stuck or dead workers are replaced and counted."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lit_align.rewards import GradingPool, grade, grade_many
from lit_align.rewards.formats import r1_zero_reward_fn


def _adversarial(marker: str) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        touch,
        f"\\boxed{{{touch}}}",
        f"eval(compile('open(\"{marker}\", \"w\")', 'x', 'exec'))",
        f"\\text{{{touch}}}",
        f"x = {touch}",
        "9**9**9**9",
        "10^{10^{10^{10}}}",
        "2^{2^{2^{2^{2^{2^{30}}}}}}",
        "7" * 1_000_000,
        "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
        "{" * 5000,
        "\x00\x00\x00",
        "\\frac{1}{\x00}",
    ]


def test_adversarial_answers_score_zero_fast_and_execute_nothing(tmp_path):
    marker = tmp_path / "pwned"
    for answer in _adversarial(str(marker)):
        start = time.monotonic()
        assert grade(answer, "1") is False
        assert time.monotonic() - start < 10, answer[:60]
        reward = r1_zero_reward_fn(f"x </think> <answer> {answer} </answer>", "1")
        assert reward["reward"] == 0.0
    assert not marker.exists()


def test_adversarial_answers_from_worker_threads(tmp_path):
    marker = tmp_path / "pwned"
    answers = _adversarial(str(marker))
    pool = GradingPool(timeout_s=3.0)
    try:
        with ThreadPoolExecutor(max_workers=3) as ex:
            start = time.monotonic()
            results = list(ex.map(lambda a: grade(a, "1", pool=pool), answers))
        assert results == [False] * len(answers)
        # Each timeout costs at most timeout_s (× the load factor).
        assert time.monotonic() - start < 10 * len(answers)
        assert not marker.exists()
    finally:
        pool.close()


def test_timeout_kills_and_replaces_the_worker_and_counts_it():
    pool = GradingPool(num_workers=1, timeout_s=2.0)
    try:
        assert pool.verify_many([("1", "1")]) == [True]  # worker started and warm
        start = time.monotonic()
        results = pool.verify_many([("10^{10^{10^{10}}}", "1"), ("x+1", "1+x"), ("2", "3")])
        assert results == [False, True, False]  # the rest of the window survives the kill
        assert pool.stats["timeouts"] == 1 and pool.stats["restarts"] == 1
        # 2 s limit, then a fresh worker imports sympy and grades the other two.
        assert time.monotonic() - start < 15
    finally:
        pool.close()


def test_grader_workers_start_with_a_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-for-the-test")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-for-the-test")
    pool = GradingPool(num_workers=1)
    try:
        assert pool.verify_many([("x+1", "1+x")]) == [True]  # started, imports work
        pid = pool._workers[0].proc.pid
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        names = {e.split(b"=", 1)[0].decode() for e in environ if e}
        assert "OPENAI_API_KEY" not in names and "HF_TOKEN" not in names
        assert b"secret-for-the-test" not in b"\0".join(environ)
        assert "PATH" in names and "LIT_ALIGN_GRADER_MEMORY_MB" in names
    finally:
        pool.close()


def test_dead_worker_is_replaced_and_counted():
    pool = GradingPool(num_workers=1)
    try:
        assert pool.verify_many([("x+1", "1+x")]) == [True]
        pool._workers[0].proc.kill()
        pool._workers[0].proc.wait()
        assert pool.verify_many([("x+1", "1+x"), ("2x", "x+x")]) == [True, True]
        assert pool.stats["crashes"] >= 1
    finally:
        pool.close()


CASES = [("0.5", "\\frac{1}{2}"), ("x^2+2x+1", "(x+1)^2"), ("2", "3"), ("\\sqrt{8}", "2\\sqrt{2}")]
EXPECTED = [True, True, False, True]


def test_concurrent_threads_get_correct_results():
    errors: list[BaseException] = []
    outputs: list[list[bool]] = []

    def work() -> None:
        try:
            outputs.append(grade_many(CASES * 3))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert outputs == [EXPECTED * 3] * 4


def _child_case(i: int) -> tuple[bool, bool]:
    """Grade a pair no other process has seen (no cached verdict); report whether this process
    graded through a pool of its own."""
    import os

    from lit_align.rewards import get_pool

    gold = f"{i}+x" if i % 2 == 0 else f"{i + 1}+x"
    return grade(f"x+{i}", gold), get_pool()._pid == os.getpid()


CHILD_EXPECTED = [(i % 2 == 0, True) for i in range(6)]


def test_forked_processes_get_their_own_pool(monkeypatch):
    import multiprocessing as mp

    monkeypatch.setenv("LIT_ALIGN_GRADER_WORKERS", "1")
    grade("x+1", "1+x")  # the parent has a live pool before forking
    with mp.get_context("fork").Pool(2) as procs:
        assert procs.map(_child_case, range(6)) == CHILD_EXPECTED


class _GradingDataset:
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[bool, bool]:
        return _child_case(100 + i)


def test_dataloader_workers_can_grade(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("LIT_ALIGN_GRADER_WORKERS", "1")
    grade("x+1", "1+x")
    loader = torch.utils.data.DataLoader(_GradingDataset(), batch_size=None, num_workers=2)
    got = [(bool(a), bool(b)) for a, b in loader]
    assert got == [(i % 2 == 0, True) for i in range(100, 106)]


def test_parse_expr_guard_refuses_code():
    from lit_align.rewards._worker import _numbers_only

    calls = []
    guarded = _numbers_only(lambda s, *a, **k: calls.append(s) or s)
    assert guarded(" 42 ") == " 42 " and guarded("3.5") == "3.5"
    for text in ("__import__('os')", "x", "1+1", "lambda: 0"):
        with pytest.raises(RuntimeError, match="refused"):
            guarded(text)
    assert calls == [" 42 ", "3.5"]


HANG = "10^{10^{10^{10}}}"  # sympy works on it far past any time limit


def test_concurrent_callers_do_not_wait_for_each_others_batches():
    pool = GradingPool(num_workers=1, timeout_s=8.0)
    done: dict[str, float] = {}

    def slow() -> None:
        pool.verify_many([(HANG, "1")])
        done["slow"] = time.monotonic()

    try:
        assert pool.verify_many([("x+1", "1+x")]) == [True]  # one warm worker
        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)  # the slow call holds the warm worker
        assert pool.verify_many([("2x", "x+x")]) == [True]  # gets a worker of its own
        done["fast"] = time.monotonic()
        thread.join(timeout=120)
        assert done["fast"] < done["slow"]  # a single lock would have made it wait ~8 s
        assert pool.stats["timeouts"] == 1
    finally:
        pool.close()


def test_a_batch_budget_scores_pending_answers_zero_and_counts_them():
    from lit_align.rewards.sandbox import timeouts_in_this_thread

    pool = GradingPool(num_workers=1, timeout_s=60.0)
    try:
        assert pool.verify_many([("x+1", "1+x")]) == [True]  # warm
        before = timeouts_in_this_thread()
        start = time.monotonic()
        results = pool.verify_many([("2x", "x+x"), (HANG, "1"), ("3x", "x+2x")], budget_s=2.0)
        elapsed = time.monotonic() - start
        # The first answer is graded; the stuck one and the one queued behind it run out of budget.
        assert results == [True, False, False]
        assert elapsed < 10  # the budget (2 s), not the per-answer limit (60 s)
        assert pool.stats["budget_timeouts"] == 2
        assert timeouts_in_this_thread() - before == 2
        assert pool.verify_many([("x+1", "1+x")]) == [True]  # a fresh worker took over
    finally:
        pool.close()


def test_the_answer_time_limit_scales_with_machine_load(monkeypatch):
    import os

    from lit_align.rewards import sandbox

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    assert sandbox._load_factor() == 1.0  # an idle machine: the configured limit
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert sandbox._load_factor() == 4.5  # 4.5 runnable processes per CPU: 4.5× the limit
    monkeypatch.setattr(os, "getloadavg", lambda: (100.0, 1.0, 1.0))
    assert sandbox._load_factor() == 8.0  # capped


def test_grading_timeouts_reach_the_round_metrics_and_the_log(monkeypatch, caplog):
    from lit_align.engines.base import Completion
    from lit_align.grading import grade_completions
    from lit_align.rewards import MathEvaluator
    from lit_align.rewards import sandbox as sb

    pool = GradingPool(num_workers=1, timeout_s=1.0)
    monkeypatch.setattr(sb, "_POOL", pool)
    try:
        texts = [f"ok </think> <answer> {a} </answer>" for a in (HANG, "x+1")]
        completions = [Completion(0, [1], t, [0.0], [0.0], "stop") for t in texts]
        with caplog.at_level("WARNING"):
            records, _, metrics = grade_completions(
                MathEvaluator(), ["q"], ["1+x"], completions, n=2
            )
        assert metrics["grader_timeouts"] == 1.0
        assert [r["correct"] for r in records] == [False, True]
        assert "ran out of time" in caplog.text
    finally:
        pool.close()
