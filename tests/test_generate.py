"""``lit_align generate``: sample → grade → keep → SFT JSONL, against a real HTTP server on 127.0.0.1
(tests/openai_stub.py) and a local HF engine; resume, refusals, and SFT training on the output."""

from __future__ import annotations

import json
import re

import pytest

from lit_align.cli import main
from lit_align.commands import run_generate
from lit_align.data import SFTDataModule
from lit_align.data.sources import load_examples
from lit_align.data.templates import GSM8K_SYSTEM_PROMPT
from lit_align.engines import SamplingConfig
from lit_align.generate import GOLD_SYSTEM_PROMPTS
from lit_align.modules import SFTModule
from tests.helpers import cpu_trainer
from tests.openai_stub import StubServer, prompt_of

GOOD = "<reasoning>\n{k} plus {k} is {s}.\n</reasoning>\n<answer>\n{s}\n</answer>"


def _reply(body, i):
    """Per question k: sample 0 right, 1 wrong, 2 right but unformatted, 3 a copy of 0.
    Question 3 is never answered right."""
    k = int(re.search(r"What is (\d+) \+", prompt_of(body)).group(1))
    s = 2 * k if k != 3 else 0
    return [
        GOOD.format(k=k, s=s),
        GOOD.format(k=k, s=s + 1),
        f"It is {s}.",
        "  " + GOOD.format(k=k, s=s) + "\n\n",
    ][i % 4]


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [
        {"question": f"What is {k} + {k}?", "answer": f"{k}+{k}\n#### {2 * k}"} for k in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(url, data, out, *extra):
    return [
        "generate",
        f"--base_url={url}",
        "--model=stub-model",
        f"--data={data}",
        "--template=gsm8k_chat",
        "--sampling.n=4",
        "--sampling.temperature=1.0",
        f"--output={out}",
        "--progress=false",
        "--max_concurrency=2",
        *extra,
    ]


def test_generate_keeps_only_correct_formatted_unique_answers_and_resumes(
    gsm8k_file, tmp_path, capsys
):
    out = tmp_path / "gold.jsonl"
    # The first question's request fails three times (an API error); the rest succeed.
    script = [500, 500, 500]
    with StubServer(_reply, script=script) as server:
        assert (
            main([*_args(server.url, gsm8k_file, out), "--max_retries=2", "--max_concurrency=1"])
            == 0
        )
        first = capsys.readouterr().out
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        # one kept answer for each of 4 answered, solvable questions (1, 2, 4, 5)
        assert sorted(r["question"] for r in rows) == [f"What is {k} + {k}?" for k in (1, 2, 4, 5)]
        assert re.search(r"API errors \(this run\) +1 +\(rerun the command", first)
        sent = len(server.bodies)
        assert main(_args(server.url, gsm8k_file, out)) == 0  # the rerun asks for question 0 only
        second = capsys.readouterr().out
        assert len(server.bodies) == sent + 1 and prompt_of(server.bodies[-1]) == "What is 0 + 0?"
        assert main(_args(server.url, gsm8k_file, out)) == 0  # nothing left to do
        assert len(server.bodies) == sent + 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        k = int(row["question"].split()[2])
        assert row["response"] == GOOD.format(k=k, s=2 * k) + "\n"  # stripped, one newline
        assert row["answer"] == str(2 * k)
        prov = row["provenance"]
        assert prov["model"] == "stub-model" and prov["backend"] == "openai"
        assert prov["grade"]["correctness"] == 2.0 and prov["grade"]["strict_format"] == 0.5
        assert prov["sampling"]["n"] == 4 and prov["sample_index"] == 0
        assert prov["system_prompt"] == GOLD_SYSTEM_PROMPTS["gsm8k_chat"]
    request = server.bodies[-1]
    assert request["messages"][0] == {
        "role": "system",
        "content": GOLD_SYSTEM_PROMPTS["gsm8k_chat"],
    }
    # 6 questions × 4 samples: per solvable question 1 kept, 1 wrong, 1 unparseable, 1 duplicate;
    # question 3: its "right" samples are wrong (2), unformatted (1), wrong copy (1).
    totals = [line for line in second.splitlines() if line.startswith("  ")]
    assert [line.split()[-1] for line in totals] == ["1", "5", "8", "6", "5", "0"]


def test_generate_refuses_to_mix_settings_or_clobber_a_file(gsm8k_file, tmp_path):
    out = tmp_path / "gold.jsonl"
    with StubServer(_reply) as server:
        run_generate(str(gsm8k_file), str(out), "stub-model", base_url=server.url, progress=False)
        with pytest.raises(ValueError, match=r"other settings \(sampling: .*--overwrite true"):
            run_generate(
                str(gsm8k_file),
                str(out),
                "stub-model",
                base_url=server.url,
                sampling=SamplingConfig(temperature=0.5),
                progress=False,
            )
        foreign = tmp_path / "mine.jsonl"
        foreign.write_text('{"prompt": "p", "response": "r"}\n')
        with pytest.raises(FileExistsError, match="not written by lit_align generate"):
            run_generate(
                str(gsm8k_file), str(foreign), "stub-model", base_url=server.url, progress=False
            )
        with pytest.raises(ValueError, match="--endpoint chat"):
            run_generate(
                str(gsm8k_file),
                str(tmp_path / "x.jsonl"),
                "stub-model",
                base_url=server.url,
                endpoint="completions",
                progress=False,
            )
        totals = run_generate(
            str(gsm8k_file),
            str(out),
            "stub-model",
            base_url=server.url,
            sampling=SamplingConfig(temperature=0.5),
            overwrite=True,
            progress=False,
        )
    assert totals["questions"] == 6 and totals["kept"] == 5
    with pytest.raises(ValueError, match="greedy samples would be identical"):
        run_generate(
            str(gsm8k_file),
            str(out),
            "m",
            base_url="http://x/v1",
            sampling=SamplingConfig(n=2, temperature=0.0),
            progress=False,
        )


def test_a_killed_run_leaves_no_row_twice(gsm8k_file, tmp_path):
    out = tmp_path / "gold.jsonl"
    with StubServer(_reply) as server:
        run_generate(str(gsm8k_file), str(out), "stub-model", base_url=server.url, progress=False)
        progress = out.with_name("gold.jsonl.progress.jsonl")
        lines = progress.read_text().splitlines()
        # Killed after writing the last chunk's rows but before recording it as finished:
        progress.write_text("\n".join(lines[:-1]) + "\n")
        run_generate(str(gsm8k_file), str(out), "stub-model", base_url=server.url, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == 5


def test_sft_trains_on_generated_data_in_its_own_chat_format(gsm8k_file, tmp_path):
    out = tmp_path / "gold.jsonl"
    with StubServer(_reply) as server:
        run_generate(str(gsm8k_file), str(out), "stub-model", base_url=server.url, progress=False)
    examples = load_examples(str(out))
    assert all(e.prompt is None and e.response for e in examples)  # the template formats them
    module = SFTModule("tiny", dtype="float32")
    # responses: reference (as configs/sft_gsm8k.yaml sets it) keeps rows that carry a response
    dm = SFTDataModule(str(out), template="gsm8k_chat", responses="reference", micro_batch_size=5)
    cpu_trainer(max_steps=1).fit(module, dm)
    prompts, responses, *_ = dm._train
    assert len(prompts) == 5
    assert all(GSM8K_SYSTEM_PROMPT in p and "<|im_start|>assistant" in p for p in prompts)
    assert all(r.endswith("</answer>\n<|im_end|>") for r in responses)


def test_generate_with_a_local_hf_engine(tmp_path):
    out = tmp_path / "self.jsonl"
    totals = run_generate(
        "synthetic:addition",
        str(out),
        "tiny",
        template="demo",
        sampling=SamplingConfig(n=2, temperature=1.0, max_new_tokens=6),
        limit=5,
        require_format=False,
        progress=False,
    )
    samples = sum(totals[k] for k in ("kept", "wrong", "unparseable", "duplicate", "surplus"))
    unique = {(e.question, e.answer) for e in load_examples("synthetic:addition", limit=5)}
    assert len(unique) < 5  # the synthetic task repeats a question: it is answered once
    assert totals["questions"] == len(unique) and samples == 2 * len(unique)
    assert totals["api_errors"] == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == totals["kept"]  # a random tiny model: usually none, never a wrong one
    assert all(r["provenance"]["grade"]["answer_reward"] == 1.0 for r in rows)
