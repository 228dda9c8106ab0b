"""losses: hand-computed values for every primitive, gradient checks and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.advantages import group_advantages
from lit_align.compat import (
    compute_group_normalized_rewards,
    compute_grpo_clip_loss,
    compute_naive_policy_gradient_loss,
    compute_policy_gradient_loss,
    grpo_microbatch_train_step,
    sft_microbatch_train_step,
)
from lit_align.compat import masked_mean as compat_masked_mean
from lit_align.losses import (
    LossConfig,
    aggregate_loss,
    compute_per_token_policy_loss,
    kl_penalty,
    policy_loss,
)
from lit_align.ops import guarded_masked_mean

LN = math.log
# Ratios 1.5 and 0.5 per row (old log-probs 0), advantages +1 and −1, ε = 0.2.
RATIOS = torch.tensor([[1.5, 0.5], [1.5, 0.5]])
LOGP = torch.log(RATIOS)
OLD = torch.zeros(2, 2)
ADV = torch.tensor([[1.0], [-1.0]])


def test_naive_policy_gradient_loss():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    loss = compute_naive_policy_gradient_loss(torch.tensor([[2.0], [-1.0]]), logp)
    # −A·log p: −2·−1 = 2, −2·−2 = 4; −(−1)·−0.5 = −0.5, −(−1)·−3 = −3
    assert loss.tolist() == [[2.0, 4.0], [-0.5, -3.0]]


def test_grpo_clip_loss_hand_values():
    loss, meta = compute_grpo_clip_loss(ADV, LOGP, OLD, cliprange=0.2)
    # A=+1: r=1.5 → min(1.5, 1.2) = 1.2 (clipped); r=0.5 → min(0.5, 0.8) = 0.5
    # A=−1: r=1.5 → min(−1.5, −1.2) = −1.5;      r=0.5 → min(−0.5, −0.8) = −0.8 (clipped)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5], [1.5, 0.8]]))
    assert meta["clipped"].tolist() == [[True, False], [False, True]]
    assert meta["clipped_high"].tolist() == [[True, False], [False, False]]
    assert meta["clipped_low"].tolist() == [[False, False], [False, True]]


def test_asymmetric_clip_higher():
    loss, _meta = compute_per_token_policy_loss(
        LOGP, "grpo_clip", advantages=ADV, old_log_probs=OLD, cliprange=0.2, cliprange_high=0.28
    )
    # Only the upper bound moves: A=+1, r=1.5 → min(1.5, 1.28) = 1.28
    torch.testing.assert_close(loss, torch.tensor([[-1.28, -0.5], [1.5, 0.8]]))


def test_grpo_no_clip_and_gspo():
    loss, _ = compute_per_token_policy_loss(LOGP, "grpo_no_clip", advantages=ADV, old_log_probs=OLD)
    torch.testing.assert_close(loss, torch.tensor([[-1.5, -0.5], [1.5, 0.5]]))  # −r·A
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, _meta = compute_per_token_policy_loss(
        LOGP, "gspo", advantages=ADV, old_log_probs=OLD, cliprange=0.2, response_mask=mask
    )
    # Row 0: s = exp((ln 1.5 + ln 0.5)/2) = sqrt(0.75) = 0.866025 ∈ [0.8, 1.2] → −0.866025 everywhere.
    # Row 1: only token 0 counts: s = 1.5, A=−1 → −min(−1.5, −1.2) = 1.5 on every position.
    s = math.sqrt(0.75)
    torch.testing.assert_close(loss, torch.tensor([[-s, -s], [1.5, 1.5]]))


def test_policy_gradient_dispatch_and_errors():
    rewards = torch.tensor([[3.0], [0.0]])
    loss, _ = compute_policy_gradient_loss(LOGP, "no_baseline", raw_rewards=rewards)
    torch.testing.assert_close(loss, -rewards * LOGP)
    with pytest.raises(ValueError, match="old_log_probs"):
        compute_policy_gradient_loss(LOGP, "grpo_clip", advantages=ADV, cliprange=0.2)
    with pytest.raises(ValueError, match="raw_rewards"):
        compute_policy_gradient_loss(LOGP, "no_baseline", advantages=ADV)
    with pytest.raises(ValueError, match="cliprange"):
        compute_policy_gradient_loss(LOGP, "grpo_clip", advantages=ADV, old_log_probs=OLD)
    with pytest.raises(ValueError, match="accepted values: no_baseline, reinforce_with_baseline"):
        compute_policy_gradient_loss(LOGP, "ppo", advantages=ADV)
    with pytest.raises(ValueError, match="old_log_probs must have the shape"):
        compute_policy_gradient_loss(
            LOGP, "grpo_clip", advantages=ADV, old_log_probs=OLD[:, :1], cliprange=0.2
        )
    with pytest.raises(ValueError, match=r"advantages must have shape \(2, 1\)"):
        compute_policy_gradient_loss(LOGP, "reinforce_with_baseline", advantages=torch.ones(3, 1))


def test_group_normalized_rewards_hand_values():
    def reward_fn(response, truth):
        hit = float(response == truth)
        return {"reward": hit, "format_reward": 1.0, "answer_reward": hit}

    responses = ["4", "5", "6", "7", "7", "7"]
    truths = ["4"] * 3 + ["7"] * 3
    adv, raw, meta = compute_group_normalized_rewards(reward_fn, responses, truths, 3, 1e-6, True)
    assert raw.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    # Group 1: mean 1/3, unbiased std sqrt(((2/3)² + 2(1/3)²)/2) = sqrt(1/3) = 0.57735
    # → (2/3)/0.57735 = 1.154701, (−1/3)/0.57735 = −0.577350. Group 2: zero variance → 0, no NaN.
    torch.testing.assert_close(
        adv, torch.tensor([1.154701, -0.577350, -0.577350, 0, 0, 0]), atol=1e-5, rtol=0
    )
    assert meta["zero_variance_group_frac"] == 0.5
    assert meta["format_reward_mean"] == 1.0 and meta["answer_reward_mean"] == pytest.approx(4 / 6)
    adv, _, _ = compute_group_normalized_rewards(reward_fn, responses, truths, 3, 1e-6, False)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, -1 / 3, 0, 0, 0]))
    with pytest.raises(ValueError, match="group_size must divide"):
        compute_group_normalized_rewards(reward_fn, responses, truths, 4, 1e-6, True)


def test_leave_one_out_baseline():
    adv, _ = group_advantages(
        torch.tensor([1.0, 0.0, 0.0]), 3, normalize_by_std=False, baseline="leave_one_out"
    )
    # r_i − mean of the others: 1 − 0 = 1; 0 − (1+0)/2 = −0.5
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, -0.5]))
    with pytest.raises(ValueError, match="baseline"):
        group_advantages(torch.ones(4), 2, baseline="median")


def test_kl_estimators_hand_values():
    logp, ref = torch.tensor([LN(0.5)]), torch.tensor([LN(0.25)])  # log-ratio = ln 2
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(LN(2))
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * LN(2) ** 2)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(
        0.5 + LN(2) - 1
    )  # e^{−ln2} + ln2 − 1
    assert kl_penalty(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(logp, ref, "k4")


def test_aggregations_hand_values():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(loss, mask, "seq_mean_token_mean").item() == pytest.approx(
        3.0
    )  # (2 + 4)/2
    assert aggregate_loss(loss, mask, "token_mean").item() == pytest.approx(2.5)  # 10/4
    # (6/3 + 4/3)/2 = 5/3
    assert aggregate_loss(loss, mask, "seq_mean_token_sum_norm", 3.0).item() == pytest.approx(5 / 3)
    assert aggregate_loss(loss, mask, "token_mean", token_normalizer=5.0).item() == pytest.approx(
        2.0
    )
    with pytest.raises(ValueError, match="accepted values: seq_mean_token_mean, token_mean"):
        aggregate_loss(loss, mask, "sum")


def test_policy_loss_metrics_and_kl():
    mask = torch.ones(2, 2)
    ref = LOGP - torch.log(torch.tensor(2.0))  # log-ratio to the reference = ln 2 on every token
    loss, m = policy_loss(
        LOGP,
        mask,
        LossConfig("grpo_clip", cliprange=0.2, kl_coef=0.1, kl_estimator="k3"),
        advantages=ADV,
        old_log_probs=OLD,
        ref_log_probs=ref,
    )
    # Surrogate per token [[−1.2, −0.5], [1.5, 0.8]] → seq means −0.85, 1.15 → 0.15
    # KL k3 = 0.5 + ln2 − 1 = 0.193147 on every token → + 0.1·0.193147
    assert m["pg_loss"].item() == pytest.approx(0.15)
    assert loss.item() == pytest.approx(0.15 + 0.0193147, rel=1e-5)
    assert m["kl"].item() == pytest.approx(0.193147, rel=1e-5)
    assert (
        m["clip_frac"].item() == 0.5
        and m["clip_frac_low"].item() == 0.25
        and m["clip_frac_high"].item() == 0.25
    )
    assert (m["ratio_min"].item(), m["ratio_mean"].item(), m["ratio_max"].item()) == pytest.approx(
        (0.5, 1.0, 1.5)
    )
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss(
            LOGP, mask, LossConfig("grpo_clip", kl_coef=0.1), advantages=ADV, old_log_probs=OLD
        )


def test_truncated_importance_sampling():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    rollout = torch.log(
        torch.tensor([[0.25, 0.5]])
    )  # weights exp(ln .5 − ln .25) = 2 → capped, and 1
    loss, m = policy_loss(
        logp,
        torch.ones(1, 2),
        LossConfig("reinforce_with_baseline", tis_cap=1.5),
        advantages=torch.tensor([[1.0]]),
        rollout_log_probs=rollout,
    )
    # per token −A·log p = ln 2 each; weights [1.5, 1] → mean (1.5 ln2 + ln2)/2 = 1.25 ln 2
    assert loss.item() == pytest.approx(1.25 * LN(2))
    assert m["tis_weight_mean"].item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="rollout_log_probs"):
        policy_loss(
            logp,
            torch.ones(1, 2),
            LossConfig("reinforce_with_baseline", tis_cap=2.0),
            advantages=torch.tensor([[1.0]]),
        )


def test_policy_loss_gradcheck():
    torch.manual_seed(0)
    logp = (torch.rand(3, 4, dtype=torch.double) * -2).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(3, 4, dtype=torch.double)
    ref = logp.detach() + 0.1 * torch.randn(3, 4, dtype=torch.double)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.double)
    adv = torch.randn(3, 1, dtype=torch.double)
    for loss_type in ("grpo_clip", "gspo", "grpo_no_clip", "reinforce_with_baseline"):

        def fn(x, loss_type=loss_type):
            return policy_loss(
                x,
                mask,
                LossConfig(loss_type, cliprange=0.2, kl_coef=0.05, aggregation="token_mean"),
                advantages=adv,
                old_log_probs=old,
                ref_log_probs=ref,
            )[0]

        assert torch.autograd.gradcheck(fn, (logp,)), loss_type


def test_sft_microbatch_train_step_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    loss, _ = sft_microbatch_train_step(
        logp, mask, gradient_accumulation_steps=2, normalize_constant=2.0
    )
    # per-sequence −sum/2: 3/2 = 1.5 and 11/2 = 5.5 → mean 3.5 → ÷ 2 steps = 1.75
    assert loss.item() == pytest.approx(1.75)
    # d loss / d logp = −mask / (constant · B · steps) = −1/8 on masked tokens
    torch.testing.assert_close(logp.grad, -mask.float() / 8)


def _toy_policy(seed=0):
    """A linear 'policy' over a 5-token vocabulary, to check gradients on real parameters."""
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 5, dtype=torch.double)


def _toy_batch(B=8, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 3, generator=g, dtype=torch.double)
    y = torch.randint(0, 5, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    adv = torch.randn(B, 1, generator=g, dtype=torch.double)
    return x, y, mask, adv


def _logp(policy, x, y):
    return torch.log_softmax(policy(x), dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("loss_type", ["grpo_clip", "reinforce_with_baseline", "gspo"])
def test_grpo_gradient_accumulation_invariance(loss_type):
    x, y, mask, adv = _toy_batch()
    old = _logp(_toy_policy(), x, y).detach() + 0.1
    whole = _toy_policy()
    grpo_microbatch_train_step(
        _logp(whole, x, y), mask, 1, loss_type, advantages=adv, old_log_probs=old, cliprange=0.2
    )
    micro = _toy_policy()
    for sl in torch.arange(8).chunk(4):
        grpo_microbatch_train_step(
            _logp(micro, x[sl], y[sl]),
            mask[sl],
            4,
            loss_type,
            advantages=adv[sl],
            old_log_probs=old[sl],
            cliprange=0.2,
        )
    torch.testing.assert_close(micro.weight.grad, whole.weight.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(micro.bias.grad, whole.bias.grad, rtol=0, atol=1e-6)


def test_token_mean_accumulation_with_token_normalizer():
    x, y, mask, adv = _toy_batch()
    whole = _toy_policy()
    grpo_microbatch_train_step(
        _logp(whole, x, y),
        mask,
        1,
        "reinforce_with_baseline",
        advantages=adv,
        aggregation="token_mean",
    )
    micro = _toy_policy()
    per_step = mask.sum().item() / 4  # tokens of the accumulation window ÷ steps
    for sl in torch.arange(8).chunk(4):
        grpo_microbatch_train_step(
            _logp(micro, x[sl], y[sl]),
            mask[sl],
            4,
            "reinforce_with_baseline",
            advantages=adv[sl],
            aggregation="token_mean",
            token_normalizer=per_step,
        )
    torch.testing.assert_close(micro.weight.grad, whole.weight.grad, rtol=0, atol=1e-6)


def test_extra_right_padding_changes_nothing():
    x, y, mask, adv = _toy_batch()
    old = torch.full(y.shape, -1.5, dtype=torch.double)
    base = _toy_policy()
    loss_a, _ = grpo_microbatch_train_step(
        _logp(base, x, y), mask, 1, "grpo_clip", advantages=adv, old_log_probs=old, cliprange=0.2
    )
    pad = 5
    xp = torch.cat([x, torch.randn(8, pad, 3, dtype=torch.double)], dim=1)
    yp = torch.cat([y, torch.zeros(8, pad, dtype=torch.long)], dim=1)
    mp = torch.cat([mask, torch.zeros(8, pad, dtype=torch.double)], dim=1)
    oldp = torch.cat([old, torch.zeros(8, pad, dtype=torch.double)], dim=1)
    padded = _toy_policy()
    loss_b, _ = grpo_microbatch_train_step(
        _logp(padded, xp, yp), mp, 1, "grpo_clip", advantages=adv, old_log_probs=oldp, cliprange=0.2
    )
    assert loss_b.item() == pytest.approx(loss_a.item(), abs=1e-12)
    torch.testing.assert_close(padded.weight.grad, base.weight.grad, rtol=0, atol=1e-12)


def test_constant_groups_give_exactly_zero_whatever_eps():
    # float32 std of eight 0.7s is ~6e-8, not 0: without an exact check, ±0.935 advantages.
    for eps in (0.0, 1e-6):
        adv, m = group_advantages(torch.full((8,), 0.7), 8, advantage_eps=eps)
        assert adv.tolist() == [0.0] * 8 and m["zero_variance_group_frac"].item() == 1.0
    adv, m = group_advantages(torch.tensor([0.7] * 4 + [0.0, 1.0, 0.0, 1.0]), 4, advantage_eps=0.0)
    assert adv[:4].tolist() == [0.0] * 4 and m["zero_variance_group_frac"].item() == 0.5
    # hand value: group [0, 1, 0, 1], mean 0.5, unbiased std sqrt(1/3); A = ±0.5 / 0.57735
    assert adv[4:].tolist() == pytest.approx([-0.8660254, 0.8660254, -0.8660254, 0.8660254])
    adv, m = group_advantages(torch.full((4,), 0.7), 2, baseline="leave_one_out")
    assert adv.tolist() == [0.0] * 4


def test_compat_masked_mean_keeps_the_reference_nan_and_the_guarded_one_gives_zero():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    empty_row = torch.tensor([[0, 0], [1, 1]])
    ref = compat_masked_mean(x, empty_row, dim=1)
    assert torch.isnan(ref[0]) and ref[1].item() == 3.5
    assert torch.isnan(compat_masked_mean(x, torch.zeros(2, 2)))
    assert compat_masked_mean(x, torch.tensor([[1, 0], [1, 1]])).item() == pytest.approx(8 / 3)
    assert guarded_masked_mean(x, empty_row, dim=1).tolist() == [0.0, 3.5]


def test_all_padding_rows_and_zero_variance_groups_never_nan():
    adv, _ = group_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), 2, advantage_eps=0.0)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]  # even with eps = 0: 0/0 is avoided
    logp = torch.full((2, 3), -1.0, requires_grad=True)
    mask = torch.tensor([[0, 0, 0], [1, 1, 0]])
    for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        loss, m = policy_loss(
            logp,
            mask,
            LossConfig("grpo_clip", aggregation=agg),
            advantages=torch.ones(2, 1),
            old_log_probs=logp.detach(),
        )
        assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in m.values())
    loss, m = policy_loss(
        logp,
        torch.zeros(2, 3),
        LossConfig("grpo_clip"),
        advantages=torch.ones(2, 1),
        old_log_probs=logp.detach(),
    )
    assert loss.item() == 0.0 and all(torch.isfinite(v).all() for v in m.values())
    loss.backward()
    assert torch.isfinite(logp.grad).all()


def test_on_policy_identities():
    logp = torch.randn(4, 5)
    _, m = policy_loss(
        logp,
        torch.ones(4, 5),
        LossConfig("grpo_clip"),
        advantages=torch.randn(4, 1),
        old_log_probs=logp.clone(),
    )
    assert m["ratio_min"].item() == m["ratio_max"].item() == 1.0
    assert m["clip_frac"].item() == 0.0


def test_sequence_normalizer_drops_masked_rows_from_the_mean():
    loss = torch.tensor([[1.0, 3.0], [5.0, 5.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])  # row 2 dropped from the loss
    # per-sequence means 2, 5, 0 → sum 7 over the 2 sequences that count = 3.5 (plain mean: 7/3)
    assert aggregate_loss(
        loss, mask, "seq_mean_token_mean", sequence_normalizer=2.0
    ).item() == pytest.approx(3.5)
    assert aggregate_loss(loss, mask, "seq_mean_token_mean").item() == pytest.approx(7 / 3)
    # Dr. GRPO: sums 4, 5, 0 ÷ constant 2 → 2, 2.5, 0 → ÷ 2 sequences
    assert aggregate_loss(
        loss, mask, "seq_mean_token_sum_norm", 2.0, sequence_normalizer=2.0
    ).item() == pytest.approx(2.25)
