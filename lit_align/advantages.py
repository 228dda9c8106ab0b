"""Group advantages: each response's reward against its group (GRPO, RLOO).

Shapes: N = responses, G = group size; a prompt's G responses are contiguous.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["BaselineType", "constant_groups", "group_advantages"]

BaselineType = Literal["mean", "leave_one_out"]


def constant_groups(raw_rewards: Tensor, group_size: int) -> Tensor:
    """(N/G,) True for groups whose rewards are all exactly equal.

    Compared value by value, not through the std: in float32 the std of eight 0.7s is ~6e-8, not
    0, and dividing by it would turn rounding noise into advantages of ±0.9.
    """
    grouped = raw_rewards.view(-1, group_size)  # (N/G, G)
    return (grouped == grouped[:, :1]).all(dim=1)


def group_advantages(
    raw_rewards: Tensor,
    group_size: int,
    advantage_eps: float = 1e-6,
    normalize_by_std: bool = True,
    baseline: BaselineType = "mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """Advantages of rewards laid out in contiguous groups of ``group_size``.

    ``mean``: A = r − mean(group); ``leave_one_out`` (RLOO, Ahmadian et al. 2024):
    A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean). With ``normalize_by_std`` either is divided
    by (unbiased group std + ``advantage_eps``).

    Args:
        raw_rewards: (N,) rewards, N divisible by ``group_size``.
        group_size: G, responses per prompt.
        advantage_eps: added to the std (a floor for groups of nearly equal rewards). Groups
            whose rewards are all equal give exactly 0 whatever eps is.
        normalize_by_std: divide by the group's standard deviation.
        baseline: ``"mean"`` or ``"leave_one_out"``.

    Returns:
        (advantages (N,), metrics) where metrics hold the group reward std mean and the fraction of
        groups whose rewards have zero variance (GRPO learns nothing from those).
    """
    if baseline not in get_args(BaselineType):
        raise ValueError(
            f"unknown baseline {baseline!r}; accepted values: {', '.join(get_args(BaselineType))}"
        )
    if raw_rewards.dim() != 1:
        raise ValueError(f"raw_rewards must be 1-D (N,), got shape {tuple(raw_rewards.shape)}")
    if group_size < 1 or raw_rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size must divide the number of rewards: {raw_rewards.numel()} rewards, "
            f"group_size={group_size}"
        )
    if baseline == "leave_one_out" and group_size < 2:
        raise ValueError("baseline='leave_one_out' needs group_size >= 2")
    grouped = raw_rewards.float().view(-1, group_size)  # (N/G, G)
    constant = constant_groups(grouped.reshape(-1), group_size).unsqueeze(1)  # (N/G, 1)
    mean = grouped.mean(dim=1, keepdim=True)
    centered = torch.where(constant, 0.0, grouped - mean)
    if baseline == "leave_one_out":
        centered = centered * (group_size / (group_size - 1))
    # Unbiased std (torch default); a constant group (or a single sample) has none.
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    std = torch.where(constant, 0.0, std)
    if normalize_by_std:
        denom = std + advantage_eps
        # A constant group is all zeros after centering; keep it 0 even when eps = 0.
        adv = torch.where(denom > 0, centered / denom.clamp(min=torch.finfo(denom.dtype).tiny), 0.0)
    else:
        adv = centered
    metrics = {
        "reward_std_in_group": std.mean().detach(),
        "zero_variance_group_frac": constant.float().mean().detach(),
    }
    return adv.reshape(-1), metrics
