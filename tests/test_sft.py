"""SFT: accumulation invariance, exact token normalizers, resume = uninterrupted run."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_align.data import SFTDataModule
from lit_align.data.sft import WindowBatchSampler
from lit_align.modules import SFTModule
from tests.helpers import cpu_trainer


def _sgd(params):
    return torch.optim.SGD(params, lr=0.5)


def _trainer(**kw):
    return cpu_trainer(**{"max_epochs": None, "reload_dataloaders_every_n_epochs": 0, **kw})


def _fit(micro, accumulate, size=8, aggregation="token_mean", **trainer_kw):
    module = SFTModule(
        "tiny",
        dtype="float32",
        optimizer=_sgd,
        loss_aggregation=aggregation,
        normalize_constant=4.0,
    )
    dm = SFTDataModule(
        "synthetic:addition", template="demo", synthetic_size=size, micro_batch_size=micro
    )
    _trainer(accumulate_grad_batches=accumulate, **trainer_kw).fit(module, dm)
    return module


@pytest.mark.parametrize("aggregation", ["token_mean", "sum_norm"])
def test_accumulation_invariance_micro1x4_equals_micro4x1(aggregation):
    a = _fit(micro=1, accumulate=4, size=4, aggregation=aggregation, max_steps=1)
    b = _fit(micro=4, accumulate=1, size=4, aggregation=aggregation, max_steps=1)
    start = SFTModule("tiny", dtype="float32").model
    moved = 0.0
    for (name, pa), pb, p0 in zip(
        a.model.named_parameters(), b.model.parameters(), start.parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6, msg=name)
        moved = max(moved, (pa - p0).abs().max().item())
    assert moved > 1e-3  # one real step was taken


def test_batch_size_derives_accumulation_and_equals_setting_it_by_hand():
    module = SFTModule("tiny", dtype="float32", optimizer=_sgd, loss_aggregation="token_mean")
    dm = SFTDataModule(
        "synthetic:addition", template="demo", synthetic_size=4, micro_batch_size=1, batch_size=4
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(module, dm)
    assert trainer.accumulate_grad_batches == 4
    by_hand = _fit(micro=1, accumulate=4, size=4, max_steps=1)
    for pa, pb in zip(module.model.parameters(), by_hand.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="must be divisible by micro_batch_size"):
        SFTDataModule("synthetic:addition", micro_batch_size=3, batch_size=4)
    dm = SFTDataModule("synthetic:addition", template="demo", micro_batch_size=1, batch_size=4)
    with pytest.raises(ValueError, match=r"remove trainer\.accumulate_grad_batches"):
        _trainer(accumulate_grad_batches=2, max_steps=1).fit(module, dm)


def test_window_normalizers_sum_to_the_exact_token_mean():
    counts = [3, 5, 7, 11, 13, 2, 4]
    sampler = WindowBatchSampler(counts, micro_batch_size=2, accumulate=2, seed=1)
    batches = list(sampler)
    assert (
        sorted(i for b in batches for i, _ in b) == list(range(7))
        and len(batches) == len(sampler) == 4
    )
    # Each window: Σ_microbatch (tokens_b / normalizer) / accumulate = 1, i.e. a token mean.
    for w in range(0, len(batches), 2):
        window = batches[w : w + 2]
        total = sum(sum(counts[i] for i, _ in b) / b[0][1] for b in window) / 2
        assert total == pytest.approx(1.0)
    sampler.set_epoch(1)
    assert [i for b in sampler for i, _ in b] != [i for b in batches for i, _ in b]


def test_ranks_split_each_window_like_one_process_with_more_accumulation():
    counts = list(range(1, 17))
    single = list(WindowBatchSampler(counts, micro_batch_size=2, accumulate=4, seed=3))
    ranks = [list(WindowBatchSampler(counts, 2, 2, 3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for w in range(2):  # global window w: single's micro-batches 4w..4w+3, ranks' 2w..2w+1
        single_window = {i for b in single[4 * w : 4 * w + 4] for i, _ in b}
        rank_window = {i for r in ranks for b in r[2 * w : 2 * w + 2] for i, _ in b}
        assert single_window == rank_window
        # DDP averages over 2 ranks and Lightning divides by accumulate 2: the same token mean.
        total = (
            sum(sum(counts[i] for i, _ in b) / b[0][1] for r in ranks for b in r[2 * w : 2 * w + 2])
            / 2
            / 2
        )
        assert total == pytest.approx(1.0)
        assert ranks[0][2 * w][0][1] == single[4 * w][0][1]  # same normalizer as the single process


def test_resume_from_checkpoint_continues_identically(tmp_path):
    kw = dict(size=16, micro=4, accumulate=2)
    full = _fit(max_epochs=2, **kw)

    ckpt_dir = tmp_path / "ckpt"
    module = SFTModule("tiny", dtype="float32", optimizer=_sgd)
    dm = SFTDataModule("synthetic:addition", template="demo", synthetic_size=16, micro_batch_size=4)
    callback = ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    _trainer(
        accumulate_grad_batches=2, max_epochs=1, enable_checkpointing=True, callbacks=[callback]
    ).fit(module, dm)

    resumed = SFTModule("tiny", dtype="float32", optimizer=_sgd)
    dm = SFTDataModule("synthetic:addition", template="demo", synthetic_size=16, micro_batch_size=4)
    trainer = _trainer(accumulate_grad_batches=2, max_epochs=2)
    trainer.fit(resumed, dm, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert trainer.global_step == 4
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_sft_datamodule_errors_name_the_fix(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Q", "answer": "#### 1"}\n')
    module = SFTModule("tiny", dtype="float32")
    dm = SFTDataModule(str(path), template="demo")
    with pytest.raises(ValueError, match="set responses: reference"):
        _trainer(max_steps=1).fit(module, dm)
    with pytest.raises(ValueError, match="accepted values: token_mean, sum_norm"):
        SFTModule("tiny", loss_aggregation="mean")


def test_resume_from_a_mid_epoch_checkpoint_is_bitwise_identical(tmp_path):
    # 16 examples, micro 2 × accumulate 2: 4 optimizer steps per epoch; killed after step 3 of
    # epoch 1 (step 7 of 8).
    kw = dict(size=16, micro=2, accumulate=2)
    full = _fit(max_epochs=2, **kw)

    def fresh():
        module = SFTModule(
            "tiny",
            dtype="float32",
            optimizer=_sgd,
            loss_aggregation="token_mean",
            normalize_constant=4.0,
        )
        dm = SFTDataModule(
            "synthetic:addition", template="demo", synthetic_size=16, micro_batch_size=2
        )
        return module, dm

    module, dm = fresh()
    every_step = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    _trainer(
        accumulate_grad_batches=2, max_steps=7, enable_checkpointing=True, callbacks=[every_step]
    ).fit(module, dm)
    (mid,) = tmp_path.glob("epoch=1-step=7.ckpt")

    resumed, dm = fresh()
    trainer = _trainer(accumulate_grad_batches=2, max_epochs=2)
    trainer.fit(resumed, dm, ckpt_path=str(mid))
    assert trainer.global_step == 8
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_each_epoch_sees_every_example_once_in_a_new_order():
    class Batches(L.Callback):
        def __init__(self):
            self.epochs: dict[int, list[tuple]] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rows = [tuple(r.tolist()) for r in batch["input_ids"]]
            self.epochs.setdefault(trainer.current_epoch, []).extend(rows)

    seen = Batches()
    module = SFTModule("tiny", dtype="float32", optimizer=_sgd)
    dm = SFTDataModule("synthetic:addition", template="demo", synthetic_size=16, micro_batch_size=1)
    _trainer(max_epochs=2, callbacks=[seen]).fit(module, dm)
    first, second = seen.epochs[0], seen.epochs[1]
    assert len(first) == len(second) == 16 and sorted(first) == sorted(second)
    assert first != second  # reshuffled (epoch 0's order was replayed before)


def test_sft_targets_end_with_the_end_of_turn_token_counted_in_the_loss():
    from lit_align.data.templates import end_of_response
    from lit_align.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("tiny", dtype="float32")
    assert end_of_response("demo", tokenizer) == "<|endoftext|>"  # the tokenizer's EOS
    assert end_of_response("gsm8k_chat", tokenizer) == "<|im_end|>"  # the chat turn's end

    module = SFTModule("tiny", dtype="float32")
    dm = SFTDataModule("synthetic:addition", template="demo", synthetic_size=8, micro_batch_size=8)
    trainer = _trainer(max_steps=1)
    dm.trainer = trainer
    trainer.strategy.connect(module)
    prompts, responses, *_ = dm._training_pairs()
    assert all(r.endswith("<|endoftext|>") and r.count("<|endoftext|>") == 1 for r in responses)
    batch = dm._collate([(p, r, 1.0) for p, r in zip(prompts, responses, strict=True)])
    eos = tokenizer.eos_token_id
    for labels, mask in zip(batch["labels"], batch["response_mask"], strict=True):
        last = int(mask.nonzero().max())
        assert labels[last].item() == eos  # the final target is EOS, and it is in the loss
    off = SFTDataModule("synthetic:addition", template="demo", synthetic_size=8, end_with_eos=False)
    off.trainer = trainer
    assert not any(r.endswith("<|endoftext|>") for r in off._training_pairs()[1])


def test_real_qwen_tokenizer_ends_chat_responses_with_im_end():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "qwen3"
    if not path.exists():
        pytest.skip("../shared/tokenizers/qwen3 is not beside this clone")
    from transformers import AutoTokenizer

    from lit_align.data.templates import end_of_response

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    assert end_of_response("gsm8k_chat", tokenizer) == "<|im_end|>"
    assert end_of_response("r1_zero", tokenizer) == tokenizer.eos_token


def _padding(batches, lengths):
    """Pad tokens ÷ all tokens when each micro-batch is padded to its longest example."""
    padded = sum(max(lengths[i] for i, _ in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i, _ in b) / padded


def test_length_grouping_cuts_padding_and_still_sees_every_example_once_per_epoch():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(100, 300) for _ in range(600)]
    counts = [n // 2 for n in lengths]
    plain = WindowBatchSampler(counts, 16, accumulate=2, seed=4)
    grouped = WindowBatchSampler(
        counts, 16, accumulate=2, seed=4, lengths=lengths, length_bucket=256
    )
    for sampler in (plain, grouped):
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert sorted(i for b in batches for i, _ in b) == list(range(600))
            assert len(batches) == len(sampler) == 38  # 600 / 16, rounded up
            for w in range(0, 36, 2):  # whole windows: normalizers still give a token mean
                total = sum(sum(counts[i] for i, _ in b) / b[0][1] for b in batches[w : w + 2])
                assert total / 2 == pytest.approx(1.0)
    grouped.set_epoch(0)
    plain.set_epoch(0)
    assert _padding(list(plain), lengths) > 0.2
    assert _padding(list(grouped), lengths) < 0.05
    # seeded: the same order again, another one next epoch
    assert list(grouped) == list(grouped)
    grouped.set_epoch(1)
    again = list(grouped)
    grouped.set_epoch(0)
    assert again != list(grouped)
    with pytest.raises(ValueError, match="length_bucket needs"):
        WindowBatchSampler(counts, 16, length_bucket=256)


def test_sft_loss_of_a_micro_batch_is_the_unpadded_loss(tiny_model, tiny_tokenizer):
    """Grouping only changes padding, and a micro-batch's loss does not depend on it: the loss
    equals the loss of the same examples padded wider, and the token-weighted loss of each
    example on its own (no padding at all), within 1e-5."""
    from lit_align.losses import sft_loss
    from lit_align.ops import get_response_log_probs, tokenize_prompt_and_output

    prompts = ["Q: 1 + 2 =", "Q: what is 12 + 30, step by step?", "Hi", "Q: 7 * 8"]
    responses = [
        " 3<|endoftext|>",
        " 12 + 30 = 42<|endoftext|>",
        " hello there<|endoftext|>",
        " 56",
    ]

    def loss_of(batch, pad_extra=0, normalizer=None):
        ids, labels, mask = batch["input_ids"], batch["labels"], batch["response_mask"].float()
        if pad_extra:
            pad = torch.full((ids.shape[0], pad_extra), tiny_tokenizer.pad_token_id)
            ids, labels = torch.cat([ids, pad], 1), torch.cat([labels, pad], 1)
            mask = torch.cat([mask, torch.zeros(ids.shape[0], pad_extra)], 1)
        lp = get_response_log_probs(tiny_model, ids, labels, positions=mask)["log_probs"]
        return sft_loss(lp, mask, token_normalizer=normalizer)[0]

    batch = tokenize_prompt_and_output(prompts, responses, tiny_tokenizer)
    tokens = float(batch["response_mask"].sum())
    with torch.no_grad():
        tight = loss_of(batch, normalizer=tokens)
        wide = loss_of(batch, pad_extra=37, normalizer=tokens)
        alone = sum(
            loss_of(tokenize_prompt_and_output([p], [r], tiny_tokenizer), normalizer=tokens)
            for p, r in zip(prompts, responses, strict=True)
        )
    assert abs(float(tight) - float(wide)) < 1e-5
    assert abs(float(tight) - float(alone)) < 1e-5


def test_sft_on_transcripts_trains_the_model_turns_only_with_the_episodes_tokens(tmp_path):
    """A tool episode as an SFT target: the same token ids an episode would hold (prompt,
    turn, the environment's rendering, turn), the loss mask 1 on the turns and 0 on the tool's
    message; rows in the layout ``lit_align eval`` writes load the same way."""
    import json

    from lit_align.environments import ToolEnvironment
    from lit_align.environments.episodes import render_reply

    module = SFTModule("tiny", dtype="float32")
    trainer = _trainer(max_steps=1)
    env = ToolEnvironment(tools=["calculator"])
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "37 * 48"}}</tool_call>'
    transcript = [
        {"role": "assistant", "content": call},
        {"role": "tool", "name": "calculator", "content": "1776"},
        {"role": "assistant", "content": "<answer> 1776 </answer>"},
    ]
    path = tmp_path / "episodes.jsonl"
    row = {"question": "What is 37 * 48?", "transcript": transcript, "ground_truth": "1776"}
    path.write_text(json.dumps(row) + "\n")
    dm = SFTDataModule(str(path), template="demo_chat", environment=env, micro_batch_size=1)
    dm.trainer = trainer
    trainer.strategy.connect(module)
    tok = module.tokenizer
    prompts, responses, counts, _ = dm._training_pairs()
    assert prompts[0].startswith("<|im_start|>system\ntools: calculator(expression)<|im_end|>")
    batch = dm._collate([(prompts[0], responses[0], 1.0)])

    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    turn1, reply = ids(call), render_reply(tok, transcript[1:2])
    turn2 = ids("<answer> 1776 </answer><|im_end|>")  # the last turn ends the chat turn
    expected = ids(prompts[0]) + turn1 + reply + turn2
    assert [*batch["input_ids"][0].tolist(), batch["labels"][0, -1].item()] == expected
    mask = [0] * len(ids(prompts[0])) + [1] * len(turn1) + [0] * len(reply) + [1] * len(turn2)
    assert batch["response_mask"][0].tolist() == [bool(m) for m in mask[1:]]
    assert counts == [len(turn1) + len(turn2)]  # the window normalizers count trained tokens

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**row, "transcript": transcript[:2]}) + "\n")
    with pytest.raises(
        ValueError, match=r"bad.jsonl:1: field 'transcript' .* ends with an assistant"
    ):
        SFTDataModule(str(bad), template="demo_chat").load(str(bad), "train", None, 0)


def test_the_tool_demo_task_demonstrates_calls_and_wrong_guesses():
    from lit_align.data.sources import load_examples
    from lit_align.data.synthetic import TOOL_SHARE

    examples = load_examples("synthetic:multiplication_tools", size=400, seed=0)
    assert load_examples("synthetic:multiplication_tools", size=400, seed=0) == examples
    calls = [e for e in examples if len(e.transcript) == 3]
    assert abs(len(calls) / 400 - TOOL_SHARE) < 0.06
    for e in examples:
        a, b = (int(x) for x in e.question.removeprefix("What is ").rstrip("?").split(" * "))
        assert e.answer == str(a * b) and e.response == e.transcript[-1]["content"]
        if len(e.transcript) == 3:  # call → the calculator's result → that result
            assert f'"expression": "{a} * {b}"' in e.transcript[0]["content"]
            assert e.transcript[1]["content"] == str(a * b)
        assert (e.response == f"<answer> {a * b} </answer>") == (len(e.transcript) == 3)
