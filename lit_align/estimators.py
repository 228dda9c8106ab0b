"""Per-token estimators from sampled-token log-probs: the KL to a reference policy (Schulman's
k1/k2/k3, "Approximating KL divergence", 2020) and importance weights between the trainer's policy
and the rollout engine's (Yao et al. 2025; TRL's ``vllm_importance_sampling_mode``).

Shapes: B = sequences, T = response positions. Both clamp log-ratios before ``exp`` (verl's
bounds: ±20 on the log-ratio, ±10 on the KL estimate) so one far-off token cannot overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ISLevel",
    "ISMode",
    "KLEstimator",
    "check_choice",
    "check_same_shape",
    "importance_weights",
    "kl_penalty",
]

KLEstimator = Literal["k1", "k2", "k3"]
ISLevel = Literal["token", "sequence"]
ISMode = Literal["truncate", "mask"]


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise a ValueError naming ``name``, the bad value and the accepted ones."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; accepted values: {', '.join(choices)}")


def check_same_shape(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise a ValueError unless ``tensor`` has the shape of ``ref``, naming both."""
    if tensor.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(tensor.shape)}"
        )


def _kl_k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _kl_k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.square()


def _kl_k3(log_ratio: Tensor) -> Tensor:
    # exp(ref − logp) − (ref − logp) − 1, with log_ratio = logp − ref; ≥ 0 and unbiased.
    return torch.exp(-log_ratio) + log_ratio - 1.0


_KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3}


def kl_penalty(
    policy_log_probs: Tensor,
    ref_log_probs: Tensor,
    estimator: KLEstimator = "k3",
    log_ratio_clamp: float | None = 20.0,
    clamp: float | None = 10.0,
) -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from sampled-token log-probs (Schulman's k1/k2/k3).

    The log-ratio is clamped to ±``log_ratio_clamp`` before the estimator (k3 exponentiates it)
    and the estimate to ±``clamp``, as verl's ``low_var_kl`` does: one token the reference finds
    impossible would otherwise dominate (or overflow) the penalty. None disables either clamp.
    """
    check_choice("kl_estimator", estimator, list(_KL_ESTIMATORS))
    check_same_shape("ref_log_probs", ref_log_probs, "policy_log_probs", policy_log_probs)
    log_ratio = policy_log_probs - ref_log_probs
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    kl = _KL_ESTIMATORS[estimator](log_ratio)
    return kl if clamp is None else kl.clamp(-clamp, clamp)


def importance_weights(
    behaviour_log_probs: Tensor,
    rollout_log_probs: Tensor,
    response_mask: Tensor,
    cap: float,
    level: ISLevel = "token",
    mode: ISMode = "truncate",
    log_ratio_clamp: float | None = 20.0,
) -> Tensor:
    """Detached importance weights π_old/π_rollout correcting for the rollout engine's policy.

    ``level="token"``: one ratio per token; ``"sequence"``: one per sequence, exp of the summed
    log-ratio over its response tokens, broadcast over them. ``mode="truncate"``: min(ratio, cap);
    ``"mask"``: the ratio, or 0 where it exceeds ``cap`` (the token or sequence is dropped).
    These are TRL's ``token_truncate``/``token_mask``/``sequence_truncate``/``sequence_mask``.

    Args:
        behaviour_log_probs: (B, T) log π_old (detached here).
        rollout_log_probs: (B, T) the engine's log-probs of the same tokens.
        response_mask: (B, T) 0/1.
        cap: C > 0.
        level: ``token`` or ``sequence``.
        mode: ``truncate`` or ``mask``.
        log_ratio_clamp: clamp each log-ratio (or the sequence sum) to ±this before ``exp``.

    Returns:
        (B, T) weights, 0 outside the mask.
    """
    check_choice("tis_level", level, ["token", "sequence"])
    check_choice("tis_mode", mode, ["truncate", "mask"])
    if cap <= 0:
        raise ValueError(f"tis_cap must be > 0 (e.g. 2), got {cap}")
    check_same_shape(
        "rollout_log_probs", rollout_log_probs, "policy_log_probs", behaviour_log_probs
    )
    mask = response_mask.to(behaviour_log_probs.dtype)
    log_ratio = (behaviour_log_probs.detach() - rollout_log_probs) * mask  # (B, T)
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(log_ratio)  # (B, 1) → (B, T)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    weights = ratio.clamp(max=cap) if mode == "truncate" else ratio * (ratio <= cap)
    return weights * mask
