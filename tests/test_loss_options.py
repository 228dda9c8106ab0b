"""Loss options the peers have: dual-clip PPO, log-ratio and KL clamps, sequence-level IS.

Every expected number is computed by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.compat import grpo_microbatch_train_step
from lit_align.estimators import importance_weights, kl_penalty
from lit_align.losses import LossConfig, compute_per_token_policy_loss, policy_loss
from lit_align.modules import GRPOModule

LN = math.log


def _close(tensor: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(tensor, torch.tensor(expected), rtol=1e-6, atol=1e-6)


# Row 0: A = +1, row 1: A = −1; ratios 4 and 0.5 in each row (old log-probs 0); ε = 0.2.
RATIOS = torch.tensor([[4.0, 0.5], [4.0, 0.5]])
LOGP = torch.log(RATIOS)
OLD = torch.zeros(2, 2)
ADV = torch.tensor([[1.0], [-1.0]])


def test_dual_clip_bounds_the_loss_of_negative_advantages():
    loss, meta = compute_per_token_policy_loss(
        LOGP, "grpo_clip", advantages=ADV, old_log_probs=OLD, cliprange=0.2, clip_ratio_c=3.0
    )
    # A = +1: −min(4, 1.2) = −1.2; −min(0.5, 0.8) = −0.5 (the dual clip never touches A > 0).
    # A = −1: ratio 4: −min(−4, −1.2) = 4, capped at −c·A = 3; ratio 0.5: −min(−0.5, −0.8) = 0.8.
    _close(loss, [[-1.2, -0.5], [3.0, 0.8]])
    assert meta["clipped_dual"].tolist() == [[False, False], [True, False]]
    plain, _ = compute_per_token_policy_loss(
        LOGP, "grpo_clip", advantages=ADV, old_log_probs=OLD, cliprange=0.2
    )
    _close(plain, [[-1.2, -0.5], [4.0, 0.8]])


def test_dual_clip_matches_the_published_formula_and_has_no_gradient_past_the_bound():
    torch.manual_seed(0)
    logp = (torch.randn(6, 5) * 1.5).requires_grad_()
    old = torch.randn(6, 5)
    adv = torch.randn(6, 1)
    eps, c = 0.2, 3.0
    loss, _ = compute_per_token_policy_loss(
        logp, "grpo_clip", advantages=adv, old_log_probs=old, cliprange=eps, clip_ratio_c=c
    )
    # The dual-clip objective written out (Ye et al. 2020; verl's compute_policy_loss).
    r = torch.exp(logp.detach() - old)
    ppo = torch.maximum(-adv * r, -adv * r.clamp(1 - eps, 1 + eps))
    expected = torch.where(adv < 0, torch.minimum(-adv * c, ppo), ppo)
    torch.testing.assert_close(loss.detach(), expected)
    loss.sum().backward()
    capped = (adv < 0) & (ppo > -adv * c)
    assert capped.any()
    assert (logp.grad[capped] == 0).all()


def test_dual_clip_needs_a_bound_above_one():
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        policy_loss(
            LOGP,
            torch.ones(2, 2),
            LossConfig("grpo_clip", clip_ratio_c=1.0),
            advantages=ADV,
            old_log_probs=OLD,
        )
    with pytest.raises(ValueError, match="clip_ratio_c"):
        LossConfig(clip_ratio_c=0.5)


def test_dual_clip_fraction_is_logged():
    _, m = policy_loss(
        LOGP,
        torch.ones(2, 2),
        LossConfig("grpo_clip", clip_ratio_c=3.0),
        advantages=ADV,
        old_log_probs=OLD,
    )
    assert m["clip_frac_dual"].item() == pytest.approx(0.25)  # 1 token of 4


def test_log_ratio_is_clamped_before_exp_in_the_loss_not_in_the_reference_api():
    logp, old, adv = torch.zeros(1, 1), torch.full((1, 1), -30.0), torch.tensor([[-1.0]])
    mask = torch.ones(1, 1)
    # ratio = e^30 unclamped; the composed loss clamps the log-ratio at 20: −A·e^20 = e^20.
    clamped, _ = policy_loss(
        logp, mask, LossConfig("grpo_no_clip"), advantages=adv, old_log_probs=old
    )
    assert clamped.item() == pytest.approx(math.exp(20), rel=1e-6)
    free, _ = policy_loss(
        logp,
        mask,
        LossConfig("grpo_no_clip", log_ratio_clamp=None),
        advantages=adv,
        old_log_probs=old,
    )
    assert free.item() == pytest.approx(math.exp(30), rel=1e-6)
    # CS336 assignment 5's API (compat) keeps the unclamped value bit for bit.
    ref, _ = grpo_microbatch_train_step(
        logp.clone().requires_grad_(), mask, 1, "grpo_no_clip", advantages=adv, old_log_probs=old
    )
    assert ref.item() == pytest.approx(math.exp(30), rel=1e-6)
    raw, _ = compute_per_token_policy_loss(logp, "grpo_no_clip", advantages=adv, old_log_probs=old)
    assert raw.item() == pytest.approx(math.exp(30), rel=1e-6)


def test_kl_is_clamped_like_verl():
    # log-ratio −30 (the policy finds the token far less likely): k3 = e^30 + (−30) − 1, unclamped.
    logp, ref = torch.tensor([[-30.0, -0.5]]), torch.tensor([[0.0, 0.0]])
    free = kl_penalty(logp, ref, "k3", log_ratio_clamp=None, clamp=None)
    assert free[0, 0].item() == pytest.approx(math.exp(30) - 31, rel=1e-6)
    # Default: log-ratio clamped to −20 (e^20 − 21), then the estimate to 10.
    kl = kl_penalty(logp, ref, "k3")
    assert kl[0, 0].item() == 10.0
    # A moderate token is untouched: e^0.5 − 0.5 − 1.
    assert kl[0, 1].item() == pytest.approx(math.exp(0.5) - 1.5)
    # The same clamps reach the KL term of policy_loss.
    _, m = policy_loss(
        logp,
        torch.ones(1, 2),
        LossConfig("reinforce_with_baseline", kl_coef=0.1),
        advantages=torch.tensor([[0.0]]),
        ref_log_probs=ref,
    )
    assert m["kl"].item() == pytest.approx((10.0 + math.exp(0.5) - 1.5) / 2)


# Behaviour (old) probabilities 0.5 everywhere; the engine's: row 0 (0.25, 0.5, 1.0) → token ratios
# 2, 1, 0.5 whose product is 1; row 1 (0.25, 0.25, ·) with the last token masked → ratios 2, 2.
BEHAVIOUR = torch.log(torch.full((2, 3), 0.5))
ROLLOUT = torch.log(torch.tensor([[0.25, 0.5, 1.0], [0.25, 0.25, 0.5]]))
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    ("level", "mode", "expected"),
    [
        ("token", "truncate", [[1.5, 1.0, 0.5], [1.5, 1.5, 0.0]]),  # min(ratio, 1.5)
        ("token", "mask", [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]),  # ratio 2 > 1.5 dropped
        ("sequence", "truncate", [[1.0, 1.0, 1.0], [1.5, 1.5, 0.0]]),  # 2·1·0.5 = 1; 2·2 = 4 → 1.5
        ("sequence", "mask", [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]),  # 4 > 1.5: the sequence dropped
    ],
)
def test_importance_weights_by_level_and_mode(level, mode, expected):
    w = importance_weights(BEHAVIOUR, ROLLOUT, MASK, cap=1.5, level=level, mode=mode)
    _close(w, expected)


def test_sequence_importance_sampling_in_the_loss():
    # −A·log p with A = 1, log p = ln 0.5 per token: ln 2 each. Sequence-mask weights as above.
    loss, m = policy_loss(
        BEHAVIOUR,
        MASK,
        LossConfig("reinforce_with_baseline", tis_cap=1.5, tis_level="sequence", tis_mode="mask"),
        advantages=torch.tensor([[1.0], [1.0]]),
        rollout_log_probs=ROLLOUT,
    )
    # Row 0: mean(ln 2 · 1) = ln 2; row 1: every weight 0 → 0; batch mean ln 2 / 2.
    assert loss.item() == pytest.approx(LN(2) / 2)
    assert m["tis_masked_frac"].item() == pytest.approx(2 / 5)  # 2 of 5 response tokens
    assert m["tis_weight_mean"].item() == pytest.approx(3 / 5)


def test_importance_options_are_checked_at_start_up():
    with pytest.raises(ValueError, match="tis_level"):
        LossConfig(tis_cap=2.0, tis_level="seq")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tis_mode"):
        LossConfig(tis_cap=2.0, tis_mode="clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tis_cap must be > 0"):
        importance_weights(BEHAVIOUR, ROLLOUT, MASK, cap=0.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cliprange", -0.1, "loss.cliprange must be >= 0"),
        ("kl_coef", -1.0, "loss.kl_coef must be >= 0"),
        ("normalize_constant", 0.0, "loss.normalize_constant must be > 0"),
        ("tis_cap", 0.0, "loss.tis_cap must be > 0"),
        ("kl_clamp", 0.0, "loss.kl_clamp must be > 0"),
        ("aggregation", "sum", "unknown aggregation 'sum'"),
        ("kl_estimator", "k4", "unknown kl_estimator 'k4'"),
    ],
)
def test_the_loss_block_is_validated_where_it_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**{field: value})


def test_flat_loss_keys_name_the_block_they_moved_to():
    with pytest.raises(TypeError, match=r"kl_coef moved into the loss block: .*loss\.kl_coef"):
        GRPOModule("tiny", dtype="float32", kl_coef=0.1)
    module = GRPOModule("tiny", dtype="float32", loss=LossConfig(kl_coef=0.1))
    assert module.loss.kl_coef == 0.1 and module.ref_policy is not None
