"""data: templates, sources (local layouts, synthetic), malformed input, subsets, conversions."""

from __future__ import annotations

import json

import pytest

from lit_align.data.sources import (
    DataError,
    Example,
    filter_correct,
    load_examples,
    make_synthetic,
    reference_to_sft,
    subset,
)
from lit_align.data.templates import GSM8K_SYSTEM_PROMPT, format_prompt, stop_strings_for
from tests.conftest import SHARED_DATA


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_templates(tiny_tokenizer):
    r1 = format_prompt("r1_zero", "What is 2+2?")
    assert r1.startswith("A conversation between User and Assistant.")
    assert r1.endswith("User: What is 2+2?\nAssistant: <think>")
    assert format_prompt("question_only", "Q?") == "Q?"
    chat = format_prompt("gsm8k_chat", "Q?", tiny_tokenizer)
    assert (
        chat
        == f"<|im_start|>system\n{GSM8K_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert stop_strings_for("r1_zero") == ["</answer>"]
    with pytest.raises(ValueError, match="accepted values: r1_zero, question_only"):
        format_prompt("cot", "Q")


def test_project_prompt_copy_matches_shared():
    shared = SHARED_DATA.parent / "data" / "prompts" / "r1_zero.prompt"
    if not shared.exists():
        pytest.skip("../shared/data not present")
    assert format_prompt("r1_zero", "{question}") == shared.read_text()


def test_local_layouts(tmp_path):
    gsm = _write(tmp_path / "g.jsonl", [{"question": "Q1", "answer": "a <<1+1=2>>2\n#### 1,000"}])
    (ex,) = load_examples(gsm)
    assert (ex.question, ex.answer, ex.metadata["solution"]) == ("Q1", "1,000", "a <<1+1=2>>2")
    math = _write(
        tmp_path / "m.jsonl",
        [{"problem": "P", "solution": "so \\boxed{\\frac12}"}, {"problem": "P2", "answer": "3"}],
    )
    assert [e.answer for e in load_examples(math)] == ["\\frac12", "3"]
    sft = _write(tmp_path / "s.jsonl", [{"prompt": "PROMPT", "response": "R", "ground_truth": "7"}])
    (ex,) = load_examples(sft)
    assert (ex.prompt, ex.response, ex.answer) == ("PROMPT", "R", "7")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"question": "Q", "answer": "#### 1"}, {"question": "Q"}],
            r"g\.jsonl:2: field 'answer' is missing",
        ),
        (
            [{"question": "Q", "answer": "no final"}],
            r"g\.jsonl:1: field 'answer' has no '#### final answer'",
        ),
        (
            [{"question": "Q", "answer": "x\n####  "}],
            r"g\.jsonl:1: field 'answer' has an empty final answer",
        ),
        (['{"question": "Q", "answer": '], r"g\.jsonl:1: invalid JSON"),
        ([{"problem": "P", "answer": ""}], r"g\.jsonl:1: field 'answer' is empty"),
        ([{"foo": 1}], r"g\.jsonl:1: cannot tell the layout"),
        ([[1, 2]], r"g\.jsonl:1: expected a JSON object"),
        (
            [{"question": 12, "answer": "#### 1"}],
            r"g\.jsonl:1: field 'question' must be a string, got number",
        ),
        (
            [{"problem": "P", "answer": ["1", "2"]}],
            r"g\.jsonl:1: field 'answer' must be a string or a number, got array",
        ),
        (
            [{"prompt": "P", "response": {"a": 1}}],
            r"g\.jsonl:1: field 'response' must be a string, got object",
        ),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, rows, message):
    path = _write(tmp_path / "g.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_examples(path)


def test_numbers_are_answers_but_bad_bytes_and_empty_files_are_errors(tmp_path):
    (ex,) = load_examples(_write(tmp_path / "m.jsonl", [{"problem": "P", "answer": 42}]))
    assert ex.answer == "42"
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(
        b'{"question": "Q", "answer": "#### 1"}\n{"question": "caf\xe9", "answer": "#### 2"}\n'
    )
    with pytest.raises(
        DataError, match=r"latin1\.jsonl:2: not UTF-8 \(byte 0xe9 at column 18\); re-save"
    ):
        load_examples(str(bad))
    assert len(load_examples(str(bad), on_error="skip")) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(str(empty))
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(_write(tmp_path / "junk.jsonl", [{"foo": 1}]), on_error="skip")


def test_skip_mode_counts_and_logs(tmp_path, caplog):
    path = _write(
        tmp_path / "g.jsonl",
        [
            {"question": "Q", "answer": "#### 1"},
            "not json",
            {"question": "Q2"},
            {"question": "Q3", "answer": "#### 3"},
        ],
    )
    with caplog.at_level("WARNING"):
        examples = load_examples(path, on_error="skip")
    assert [e.answer for e in examples] == ["1", "3"]
    assert "skipped 2 malformed rows" in caplog.text and "g.jsonl:2" in caplog.text


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"):
        load_examples(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="accepted values: raise, skip"):
        load_examples("synthetic:addition", on_error="ignore")
    with pytest.raises(ValueError, match="accepted values: addition, addition_noisy, copy"):
        load_examples("synthetic:division")


def test_synthetic_is_deterministic_and_subsets_are_seeded():
    a, b = make_synthetic("addition", 50, seed=3), make_synthetic("addition", 50, seed=3)
    assert a == b and a != make_synthetic("addition", 50, seed=4)
    x, y = a[0].question, a[0].answer  # "What is p + q?" → p + q
    p, q = (int(t) for t in x.removeprefix("What is ").removesuffix("?").split(" + "))
    assert int(y) == p + q
    s1, s2 = subset(a, 10, seed=1), subset(a, 10, seed=1)
    assert s1 == s2 and len(s1) == 10 and subset(a, 10, seed=2) != s1
    assert subset(a, None) == a


def test_filter_correct_and_reference_conversion():
    good = Example("Q", "4", response=" 2+2 </think> <answer> 4 </answer>")
    bad = Example("Q", "5", response=" 2+2 </think> <answer> 4 </answer>")
    unformatted = Example("Q", "4", response="4")
    assert filter_correct([good, bad, unformatted]) == [good]
    ex = Example("Q", "72", metadata={"solution": "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72"})
    assert reference_to_sft(ex).response == " 48/2 = 24\n48+24 = 72 </think> <answer> 72 </answer>"
    assert (
        reference_to_sft(ex, "xml").response
        == "<reasoning>\n48/2 = 24\n48+24 = 72\n</reasoning>\n<answer>\n72\n</answer>\n"
    )
    with pytest.raises(DataError, match="no reference solution"):
        reference_to_sft(Example("Q", "1"))


def test_real_files_load():
    math = SHARED_DATA / "math" / "test500.jsonl"
    if not math.exists():
        pytest.skip("../shared/data not present")
    rows = load_examples(str(math))
    assert len(rows) == 500 and rows[0].metadata["unique_id"]
    gsm = load_examples(str(SHARED_DATA / "gsm8k" / "test.jsonl"), limit=128, seed=0)
    assert len(gsm) == 128
    sft = [reference_to_sft(e) for e in gsm]
    assert len(filter_correct(sft)) == 128  # every converted reference grades correct
