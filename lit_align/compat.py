"""The reference API of the CS336 alignment assignment (Stanford, spring 2025), by its names and
signatures, as thin wrappers over lit_align's own functions.

Code written against that API runs unchanged: ``from lit_align.compat import
grpo_microbatch_train_step``. The training steps here call ``backward()`` themselves, as the
reference does; lit_align's modules use :func:`lit_align.losses.policy_loss` and
:func:`lit_align.losses.sft_loss` instead, which only compute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.advantages import BaselineType, group_advantages
from lit_align.losses import (
    LossConfig,
    LossType,
    compute_per_token_policy_loss,
    policy_loss,
    sft_loss,
)
from lit_align.ops import (
    compute_entropy,
    get_response_log_probs,
    masked_normalize,
    tokenize_prompt_and_output,
)

__all__ = [
    "compute_entropy",
    "compute_group_normalized_rewards",
    "compute_grpo_clip_loss",
    "compute_naive_policy_gradient_loss",
    "compute_policy_gradient_loss",
    "get_response_log_probs",
    "grpo_microbatch_train_step",
    "masked_mean",
    "masked_normalize",
    "sft_microbatch_train_step",
    "tokenize_prompt_and_output",
]


def masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``tensor`` over the entries where ``mask`` is 1 (the CS336 assignment's semantics).

    A slice whose mask is all zeros gives NaN (0 / 0), as in the CS336 assignment; lit_align's losses use
    :func:`lit_align.ops.guarded_masked_mean`, which gives 0 there.
    """
    mask = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * mask).sum() / mask.sum()
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim)


def compute_group_normalized_rewards(
    reward_fn: Callable[[str, Any], dict[str, float]],
    rollout_responses: Sequence[str],
    repeated_ground_truths: Sequence[Any],
    group_size: int,
    advantage_eps: float,
    normalize_by_std: bool,
    baseline: BaselineType = "mean",
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Score each response with ``reward_fn`` and normalize the rewards within their groups.

    Args:
        reward_fn: ``reward_fn(response, ground_truth) -> {"reward", "format_reward", "answer_reward"}``.
        rollout_responses: N responses; prompt i's G responses are contiguous.
        repeated_ground_truths: N ground truths, each repeated G times.
        group_size: G.
        advantage_eps: added to the group std.
        normalize_by_std: divide centered rewards by the group std.
        baseline: ``"mean"`` (GRPO) or ``"leave_one_out"`` (RLOO).

    Returns:
        (advantages (N,), raw_rewards (N,), metadata) with the mean/std/min/max reward, the mean of
        every reward component and the zero-variance group fraction.
    """
    if len(rollout_responses) != len(repeated_ground_truths):
        raise ValueError(
            f"rollout_responses ({len(rollout_responses)}) and repeated_ground_truths "
            f"({len(repeated_ground_truths)}) must have the same length"
        )
    scores = [
        reward_fn(r, g) for r, g in zip(rollout_responses, repeated_ground_truths, strict=True)
    ]
    raw = torch.tensor([float(s["reward"]) for s in scores], dtype=torch.float32)
    advantages, group_metrics = group_advantages(
        raw, group_size, advantage_eps, normalize_by_std, baseline
    )
    metadata: dict[str, float] = {
        "reward_mean": raw.mean().item(),
        "reward_std": raw.std().item() if raw.numel() > 1 else 0.0,
        "reward_min": raw.min().item(),
        "reward_max": raw.max().item(),
        **{k: v.item() for k, v in group_metrics.items()},
    }
    for key in sorted(scores[0]) if scores else []:
        if key != "reward":
            metadata[f"{key}_mean"] = sum(float(s[key]) for s in scores) / len(scores)
    return advantages, raw, metadata


def compute_naive_policy_gradient_loss(
    raw_rewards_or_advantages: Tensor, policy_log_probs: Tensor
) -> Tensor:
    """Per-token −A·log p. (B, 1) weights, (B, T) log-probs → (B, T) loss."""
    loss, _ = compute_per_token_policy_loss(
        policy_log_probs, "reinforce_with_baseline", advantages=raw_rewards_or_advantages
    )
    return loss


def compute_grpo_clip_loss(
    advantages: Tensor, policy_log_probs: Tensor, old_log_probs: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token −min(ratio·A, clip(ratio, 1−ε, 1+ε)·A), ratio = exp(log p − log p_old)."""
    return compute_per_token_policy_loss(
        policy_log_probs,
        "grpo_clip",
        advantages=advantages,
        old_log_probs=old_log_probs,
        cliprange=cliprange,
    )


# The CS336 assignment's dispatch over the per-token loss types, with its signature (policy
# log-probs, loss type, raw rewards, advantages, old log-probs, cliprange) as the first six
# parameters of lit_align's: the same function under the assignment's name.
compute_policy_gradient_loss = compute_per_token_policy_loss


def sft_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    normalize_constant: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One SFT micro-batch: the assignment's loss ÷ ``gradient_accumulation_steps``, then ``backward()``.

    loss = mean over the batch of (−sum of masked log-probs ÷ ``normalize_constant``) ÷ steps.
    """
    _check_steps(gradient_accumulation_steps)
    loss, metrics = sft_loss(policy_log_probs, response_mask, "sum_norm", normalize_constant)
    return _backward(loss, gradient_accumulation_steps), metrics


def grpo_microbatch_train_step(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    gradient_accumulation_steps: int,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    **loss_options: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One GRPO micro-batch: per-token loss → masked mean per sequence → batch mean → ÷ steps → backward.

    Extra keyword arguments go to :func:`policy_loss`: tensors (``ref_log_probs``,
    ``rollout_log_probs``, normalizers) as they are, options (``cliprange_high``, ``kl_coef``,
    ``aggregation``, …) through :class:`~lit_align.losses.LossConfig`.
    """
    _check_steps(gradient_accumulation_steps)
    tensors = {k: loss_options.pop(k) for k in _LOSS_TENSORS if k in loss_options}
    # CS336 assignment 5 exponentiates unclamped log-ratios; keep its numbers bit for bit.
    loss_options.setdefault("log_ratio_clamp", None)
    loss_options.setdefault("kl_clamp", None)
    config = LossConfig(loss_type, cliprange, **loss_options)
    loss, metrics = policy_loss(
        policy_log_probs,
        response_mask,
        config,
        raw_rewards=raw_rewards,
        advantages=advantages,
        old_log_probs=old_log_probs,
        **tensors,
    )
    return _backward(loss, gradient_accumulation_steps), metrics


_LOSS_TENSORS = ("ref_log_probs", "rollout_log_probs", "token_normalizer", "sequence_normalizer")


def _check_steps(gradient_accumulation_steps: int) -> None:
    if gradient_accumulation_steps < 1:
        raise ValueError(
            f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
        )


def _backward(loss: Tensor, gradient_accumulation_steps: int) -> Tensor:
    """The CS336 assignment's micro-batch step: this micro-batch's share of the loss, backward."""
    loss = loss / gradient_accumulation_steps
    loss.backward()
    return loss
