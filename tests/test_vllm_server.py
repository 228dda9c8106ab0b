"""The OpenAI-compatible engine and ``lit_align generate`` against vLLM's own OpenAI server
(``python -m vllm.entrypoints.openai.api_server``) serving SmolLM2-135M-Instruct on 127.0.0.1; then
``lit_align fit --config configs/sft_gsm8k.yaml`` trains on what generate wrote.

Marked `vllm` and `slow` (the server starts in ~20 s; the whole file takes ~2 min on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_align.engines import APIError, OpenAICompatibleEngine, SamplingConfig
from lit_align.rewards.formats import r1_zero_rewards
from tests.helpers import cpu_vllm_engine
from tests.vllm_server import scrubbed_env, vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    with vllm_server(smollm2, "smollm2", log) as url:
        yield url


def _repeat_question(n: int) -> str:
    # A few-shot copy task that a 135M model solves: the completions endpoint continues it.
    return (
        "Repeat the number.\nUser: Repeat 3\nAssistant: <think> I repeat 3 </think> <answer> 3 "
        "</answer>\nUser: Repeat 8\nAssistant: <think> I repeat 8 </think> <answer> 8 </answer>\n"
        f"User: Repeat {n}"
    )


def test_chat_and_completions_against_vllm(server):
    with OpenAICompatibleEngine(server, "smollm2", max_concurrency=4) as engine:
        assert engine.check() == ["smollm2"]
        chat = SamplingConfig(n=3, temperature=1.0, max_new_tokens=24, seed=7)
        first = engine.generate_texts(["Name a colour.", "Say hi."], chat)
        assert [len(r) for r in first] == [3, 3]
        assert len({s.text for s in first[0]}) > 1  # n samples, not one repeated
        # (the seed is sent, but vLLM's samples also depend on the batch they share, so a
        # repeated request need not give the same texts: no reproducibility is claimed here)
    from lit_align.data.templates import format_prompt

    with OpenAICompatibleEngine(server, "smollm2", endpoint="completions") as engine:
        stop = SamplingConfig(n=1, temperature=0.0, max_new_tokens=40, stop=["</answer>"])
        (result,) = engine.generate_texts([format_prompt("demo", _repeat_question(47))], stop)
    assert isinstance(result, list), result
    # the stop string vLLM matched is kept, as the local engines keep it
    assert [s.text for s in result] == [" I repeat 47 </think> <answer> 47 </answer>"]
    assert all(s.finish_reason == "stop" for s in result)
    with pytest.raises(APIError, match=r"not served .* smollm2"):
        OpenAICompatibleEngine(server, "gpt-4o").check()


def test_generate_writes_a_dataset_that_sft_trains_on(server, smollm2, tmp_path):
    data = tmp_path / "repeat.jsonl"
    numbers = [5, 12, 47, 91, 230, 6, 77, 18, 3051, 64, 909, 2]
    rows = [{"problem": _repeat_question(n), "answer": str(n)} for n in numbers]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = tmp_path / "gold.jsonl"
    command = [
        *(sys.executable, "-m", "lit_align.cli", "generate"),
        f"--base_url={server}",
        "--model=smollm2",
        f"--data={data}",
        "--template=demo",
        "--endpoint=completions",
        "--sampling.n=4",
        "--sampling.temperature=1.0",
        "--max_per_question=2",
        "--sampling.max_new_tokens=40",
        f"--output={gold}",
        "--progress=false",
    ]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=scrubbed_env(), cwd=tmp_path)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    print(f"generate: {len(numbers)} questions x 4 samples in {seconds:.1f} s (process included)")
    kept = [json.loads(x) for x in gold.read_text().splitlines()]
    assert len(kept) >= len(numbers)  # most questions get two distinct correct answers
    regraded = r1_zero_rewards([r["response"] for r in kept], [r["answer"] for r in kept])
    assert all(g["reward"] == 1.0 for g in regraded)  # only correct, formatted answers
    for row in kept:
        assert row["response"].endswith("</answer>")  # the stop string vLLM matched, kept
        assert row["provenance"]["grade"]["reward"] == 1.0
        assert row["provenance"]["model"] == "smollm2"

    fit = [
        *(sys.executable, "-m", "lit_align.cli", "fit"),
        f"--config={REPO / 'configs' / 'sft_gsm8k.yaml'}",
        f"--data.init_args.train_source={gold}",
        "--data.init_args.val_source=null",
        "--data.init_args.micro_batch_size=4",
        "--data.init_args.batch_size=8",
        f"--model.init_args.model_name_or_path={smollm2}",
        "--model.init_args.dtype=float32",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=null",
        "--trainer.enable_progress_bar=false",
    ]
    done = subprocess.run(fit, capture_output=True, text=True, env=scrubbed_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "sft_gsm8k" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "hf_model" / "config.json").exists() or any(run.glob("**/config.json"))


def test_generate_with_an_in_process_vllm_engine(smollm2, tmp_path):
    from lit_align.commands import run_generate

    data = tmp_path / "repeat.jsonl"
    rows = [{"problem": _repeat_question(n), "answer": str(n)} for n in (5, 47, 230, 3051)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    totals = run_generate(
        str(data),
        str(tmp_path / "self.jsonl"),
        str(smollm2),
        template="demo",
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=40),
        engine=cpu_vllm_engine(),
        progress=False,
    )
    assert totals["questions"] == 4 and totals["kept"] >= 3 and totals["api_errors"] == 0
    kept = [json.loads(x) for x in (tmp_path / "self.jsonl").read_text().splitlines()]
    assert all(r["provenance"]["backend"] == "vllm" for r in kept)
    assert all(r["response"].endswith("</answer>") for r in kept)  # stop string kept


def test_judge_check_on_a_small_real_judge(server, capsys):
    """SmolLM2-135M as the judge: schema-constrained replies parse, but it barely tells the
    shipped good, flat and repetitive stories apart (judge-check says so)."""
    from lit_align.judge_check import run_judge_check

    report = run_judge_check(
        backend="openai", base_url=server, model="smollm2", structured=True, repeats=2,
        max_tokens=48,
    )  # fmt: skip
    print(capsys.readouterr().out)
    assert report["unparseable"] == 0 and report["failed_requests"] == 0
    assert report["replies"] == 18
    assert report["score_std"] < 0.5  # measured: 3 for every story (std 0), and a warning
    weighted = run_judge_check(
        backend="openai", base_url=server, model="smollm2", structured=True, repeats=1,
        max_tokens=48, weighted=True,
    )  # fmt: skip
    print(capsys.readouterr().out)
    assert weighted["unparseable"] == 0
    # G-Eval's expected scores are finer than integers (measured 2.98-2.99, std 0.006), yet so
    # close together that judge-check still warns
    assert weighted["score_std"] < 0.5
    assert any("barely differ" in w for w in weighted["warnings"]), weighted["warnings"]
