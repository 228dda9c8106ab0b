"""ops: tokenization layout, entropy, masked reductions, chunked log-probs vs the naive path."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.ops import (
    compute_entropy,
    get_response_log_probs,
    guarded_masked_mean,
    masked_normalize,
    naive_response_log_probs,
    tokenize_prompt_and_output,
)


class CharTokenizer:
    """a→1, b→2, …; pad id 0. Small enough to write the expected tensors by hand."""

    pad_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) - 96 for c in t] for t in texts]}


def test_tokenize_prompt_and_output_layout():
    out = tokenize_prompt_and_output(["ab", "d"], ["c", "efg"], CharTokenizer())
    # full = [[1,2,3,0],[4,5,6,7]]: prompt "ab"+output "c"+pad; prompt "d"+output "efg".
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert out["labels"].tolist() == [[2, 3, 0], [5, 6, 7]]
    # label 3 ("c") is the only output label of row 0; labels 5,6,7 are all output in row 1.
    assert out["response_mask"].tolist() == [[False, True, False], [True, True, True]]


def test_tokenize_prompt_and_output_real_tokenizer(tiny_tokenizer):
    prompts, outputs = (
        ["User: 2+3? Assistant: <think>", "Hi"],
        [" 5 </think> <answer> 5 </answer>", " x"],
    )
    out = tokenize_prompt_and_output(prompts, outputs, tiny_tokenizer)
    for i, (p, o) in enumerate(zip(prompts, outputs, strict=True)):
        p_ids = tiny_tokenizer(p, add_special_tokens=False)["input_ids"]
        o_ids = tiny_tokenizer(o, add_special_tokens=False)["input_ids"]
        mask = out["response_mask"][i]
        assert out["labels"][i][mask].tolist() == o_ids
        assert mask.sum().item() == len(o_ids)
        assert out["input_ids"][i][: len(p_ids)].tolist() == p_ids
        # Everything after the pair is the pad id.
        assert (
            out["labels"][i][len(p_ids) + len(o_ids) - 1 :] == tiny_tokenizer.pad_token_id
        ).all()


def test_tokenize_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="same length"):
        tokenize_prompt_and_output(["a"], ["b", "c"], CharTokenizer())


def test_compute_entropy_hand_values():
    ent = compute_entropy(torch.tensor([[0.0, 0.0], [1000.0, 0.0]]))
    assert ent[0].item() == pytest.approx(math.log(2), rel=1e-6)  # uniform over 2 → ln 2
    assert ent[1].item() == pytest.approx(0.0, abs=1e-6)  # one-hot-like, and no NaN from exp(-1000)
    uniform4 = compute_entropy(torch.zeros(3, 5, 4))
    assert torch.allclose(uniform4, torch.full((3, 5), math.log(4)))
    # p = softmax([ln 1, ln 3]) = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335
    h = compute_entropy(torch.log(torch.tensor([1.0, 3.0])))
    assert h.item() == pytest.approx(0.5623351446, rel=1e-6)


def test_masked_mean_and_normalize_hand_values():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = torch.tensor([[1, 0], [1, 1]])
    assert guarded_masked_mean(x, m).item() == pytest.approx(8 / 3)  # (1+3+4)/3
    assert guarded_masked_mean(x, m, dim=1).tolist() == [1.0, 3.5]
    assert guarded_masked_mean(x, m, dim=0).tolist() == [2.0, 4.0]
    assert masked_normalize(x, m, 2.0).item() == pytest.approx(4.0)  # 8/2
    assert masked_normalize(x, m, 2.0, dim=1).tolist() == [0.5, 3.5]
    assert masked_normalize(x, m.bool(), 2.0, dim=0).tolist() == [2.0, 2.0]
    # A row with no masked entry gives 0, never NaN.
    empty = guarded_masked_mean(x, torch.tensor([[0, 0], [1, 1]]), dim=1)
    assert empty.tolist() == [0.0, 3.5]


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 10_000])
def test_chunked_log_probs_match_naive(tiny_model, chunk_tokens):
    torch.manual_seed(0)
    ids = torch.randint(0, tiny_model.config.vocab_size, (3, 21))
    input_ids, labels = ids[:, :-1], ids[:, 1:]
    ref = naive_response_log_probs(tiny_model, input_ids, labels, return_token_entropy=True)
    got = get_response_log_probs(
        tiny_model, input_ids, labels, return_token_entropy=True, chunk_tokens=chunk_tokens
    )
    assert got["log_probs"].shape == (3, 20)
    torch.testing.assert_close(got["log_probs"], ref["log_probs"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["token_entropy"], ref["token_entropy"], rtol=1e-5, atol=1e-5)
    # Log-probs are log-softmax values of the label: always ≤ 0.
    assert (got["log_probs"] <= 0).all()


def test_chunked_log_probs_gradients_match_naive(tiny_model):
    torch.manual_seed(1)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 17))
    input_ids, labels = ids[:, :-1], ids[:, 1:]
    weights = torch.randn(2, 16)

    def grads(fn):
        tiny_model.zero_grad()
        (fn()["log_probs"] * weights).sum().backward()
        return {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    g_ref = grads(lambda: naive_response_log_probs(tiny_model, input_ids, labels))
    g_got = grads(lambda: get_response_log_probs(tiny_model, input_ids, labels, chunk_tokens=5))
    for name, g in g_ref.items():
        torch.testing.assert_close(g_got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_log_probs_unaffected_by_right_padding(tiny_model):
    ids = torch.randint(3, tiny_model.config.vocab_size, (1, 12))
    padded = torch.cat([ids, torch.full((1, 5), 1)], dim=1)
    a = get_response_log_probs(tiny_model, ids[:, :-1], ids[:, 1:])["log_probs"]
    b = get_response_log_probs(tiny_model, padded[:, :-1], padded[:, 1:])["log_probs"]
    torch.testing.assert_close(b[:, :11], a, rtol=1e-5, atol=1e-6)


def test_log_probs_shape_mismatch_is_a_value_error(tiny_model):
    with pytest.raises(ValueError, match="labels"):
        get_response_log_probs(
            tiny_model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
        )


def test_chunked_matches_naive_at_qwen_vocabulary():
    """The real vocabulary width (151,936): values to 1e-4 as the issue asks."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=151_936,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    ids = torch.randint(0, 151_936, (2, 49))
    with torch.no_grad():
        ref = naive_response_log_probs(model, ids[:, :-1], ids[:, 1:], return_token_entropy=True)
        got = get_response_log_probs(
            model, ids[:, :-1], ids[:, 1:], return_token_entropy=True, chunk_tokens=40
        )
    torch.testing.assert_close(got["log_probs"], ref["log_probs"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["token_entropy"], ref["token_entropy"], rtol=1e-4, atol=1e-4)


def test_log_probs_on_chosen_positions_match_the_full_computation(tiny_model):
    """``positions``: LM head on those positions only; values and gradients as computed in full."""
    torch.manual_seed(0)
    ids = torch.randint(0, tiny_model.config.vocab_size, (3, 9))
    labels = torch.roll(ids, -1, dims=1)
    where = torch.zeros(3, 9)
    where[0, 4:] = 1
    where[2, 1:3] = 1  # row 1: no position at all
    full = get_response_log_probs(tiny_model, ids, labels, True)
    part = get_response_log_probs(tiny_model, ids, labels, True, positions=where)
    for name in ("log_probs", "token_entropy"):
        torch.testing.assert_close(part[name], full[name] * where, rtol=1e-5, atol=1e-6)
    grads = []
    for kw in ({}, {"positions": where}):
        tiny_model.zero_grad()
        out = get_response_log_probs(tiny_model, ids, labels, **kw)["log_probs"]
        (out * where).sum().backward()
        grads.append([p.grad.clone() for p in tiny_model.parameters()])
    for g_full, g_part in zip(*grads, strict=True):
        torch.testing.assert_close(g_part, g_full, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="positions must have the shape"):
        get_response_log_probs(tiny_model, ids, labels, positions=where[:, :4])
