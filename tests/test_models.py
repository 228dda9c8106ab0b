"""models: tiny Qwen2 + in-code tokenizer, offline save/load round trip, loader options."""

from __future__ import annotations

import pytest
import torch

from lit_align.models import (
    build_tiny_model,
    load_model_and_tokenizer,
    resolve_attn_implementation,
    resolve_dtype,
)

TEXTS = [
    "A conversation between User and Assistant. User: What is 12 + 35?\nAssistant: <think>",
    " 12 + 35 = 47 </think> <answer> 47 </answer>",
    "\\boxed{\\frac{1}{2}} héllo wörld 🙂 \t tabs  and   spaces 1,000,000.5",
]


def test_tiny_model_is_small_and_deterministic(tiny_tokenizer):
    a, _ = build_tiny_model(tokenizer=tiny_tokenizer, seed=3)
    b, _ = build_tiny_model(tokenizer=tiny_tokenizer, seed=3)
    n = sum(p.numel() for p in a.parameters())
    assert 50_000 < n < 200_000
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.config.model_type == "qwen2"


def test_tiny_tokenizer_special_tokens_and_chat_template(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id is not None and tiny_tokenizer.eos_token_id is not None
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (
        text
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )
    # Digits are one token each, so tiny models can learn arithmetic.
    ids = tiny_tokenizer("12345", add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    for t in TEXTS:
        assert tiny_tokenizer.decode(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) == t


def test_save_load_round_trip_offline(tiny_model_dir, tiny_tokenizer):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    for t in TEXTS:  # transformers may swap the tokenizer class: ids must survive regardless
        assert (
            tok(t, add_special_tokens=False)["input_ids"]
            == tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
        )
    assert (tok.pad_token_id, tok.eos_token_id) == (
        tiny_tokenizer.pad_token_id,
        tiny_tokenizer.eos_token_id,
    )
    ref, _ = build_tiny_model(tokenizer=tiny_tokenizer)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits)
    assert model.config._attn_implementation == "sdpa"  # auto without CUDA + flash-attn


def test_loader_options(tiny_model_dir):
    model, tok = load_model_and_tokenizer(
        tiny_model_dir,
        dtype="bfloat16",
        attn_implementation="eager",
        gradient_checkpointing=True,
        padding_side="left",
    )
    assert model.dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    ckpt = (
        model.is_activation_checkpointing
        if hasattr(model, "is_activation_checkpointing")
        else model.is_gradient_checkpointing
    )
    assert ckpt and model.training
    assert tok.padding_side == "left"


def test_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    model, _ = build_tiny_model()
    model.save_pretrained(tmp_path)
    _, loaded = load_model_and_tokenizer(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id


def test_bad_options_name_the_accepted_values():
    with pytest.raises(ValueError, match="accepted values: auto, float32"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="attn_implementation"):
        resolve_attn_implementation("flash3")
    assert resolve_dtype("bf16") is torch.bfloat16


def test_trust_remote_code_is_off_by_default():
    import inspect

    sig = inspect.signature(load_model_and_tokenizer)
    assert sig.parameters["trust_remote_code"].default is False
