"""Pure losses: SFT, the policy-gradient family, KL estimators, length aggregation.

Everything takes tensors and masks and returns ``(value, metrics)`` with detached metrics.
Shapes: B = sequences in the micro-batch, T = response positions, G = group size, N = B·groups.

The policy-gradient family is one function, :func:`policy_loss`, built from three parts:

1. per-token surrogate (:func:`compute_per_token_policy_loss`), chosen by ``loss_type``:
   ``no_baseline`` / ``reinforce_with_baseline`` (−A·log p), ``grpo_clip`` (PPO-style clipped ratio,
   Shao et al. 2024), ``grpo_no_clip`` (unclipped ratio·A), ``gspo`` (sequence-level ratio,
   Zheng et al. 2025), with asymmetric clipping ``cliprange_low``/``cliprange_high`` (DAPO's
   clip-higher, Yu et al. 2025) and dual clipping ``clip_ratio_c`` (Ye et al. 2020, "Mastering
   complex control in MOBA games with deep RL"); the log-ratio is clamped before ``exp`` (±20,
   as verl does) so one far-off token cannot overflow the loss;
2. optional importance-sampling weights between trainer and rollout-engine log-probs, per token
   or per sequence, truncated or masked (Yao et al. 2025, "Your efficient RL framework secretly
   brings you off-policy RL training"; TRL's ``vllm_importance_sampling_mode``) and a KL penalty
   to a reference policy with estimator k1/k2/k3 (Schulman 2020), clamped to ±10;
3. length aggregation (:func:`aggregate_loss`): ``seq_mean_token_mean`` (GRPO),
   ``token_mean`` (DAPO), ``seq_mean_token_sum_norm`` (Dr. GRPO, Liu et al. 2025).

Nothing here calls ``backward()``. Group advantages are in :mod:`lit_align.advantages`; the
CS336 assignment's API (``grpo_microbatch_train_step`` and friends) in :mod:`lit_align.compat`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch
from torch import Tensor

from lit_align.aggregation import AGGREGATIONS, Aggregation, aggregate_loss
from lit_align.estimators import (
    ISLevel,
    ISMode,
    KLEstimator,
    check_choice,
    check_same_shape,
    importance_weights,
    kl_penalty,
)
from lit_align.ops import guarded_masked_mean, masked_normalize

__all__ = [
    "LOSS_FIELDS",
    "Aggregation",
    "ISLevel",
    "ISMode",
    "KLEstimator",
    "LossConfig",
    "LossType",
    "aggregate_loss",
    "compute_per_token_policy_loss",
    "importance_weights",
    "kl_penalty",
    "policy_loss",
    "sft_loss",
]

LossType = Literal["no_baseline", "reinforce_with_baseline", "grpo_clip", "grpo_no_clip", "gspo"]


# --------------------------------------------------------------------------- per-token surrogates


@dataclass(frozen=True)
class _SurrogateSpec:
    """How a loss type builds its per-token surrogate."""

    weights: Literal["raw_rewards", "advantages"]
    ratio: Literal["none", "token", "sequence"]
    clip: bool


_SURROGATES: dict[str, _SurrogateSpec] = {
    "no_baseline": _SurrogateSpec("raw_rewards", "none", clip=False),
    "reinforce_with_baseline": _SurrogateSpec("advantages", "none", clip=False),
    "grpo_clip": _SurrogateSpec("advantages", "token", clip=True),
    "grpo_no_clip": _SurrogateSpec("advantages", "token", clip=False),
    "gspo": _SurrogateSpec("advantages", "sequence", clip=True),
}


def _as_column(name: str, weights: Tensor, batch: int) -> Tensor:
    """Accept (B,) or (B, 1) per-sequence weights; return (B, 1)."""
    if weights.dim() == 1:
        weights = weights.unsqueeze(-1)
    if weights.shape != (batch, 1):
        raise ValueError(
            f"{name} must have shape ({batch}, 1) or ({batch},), got {tuple(weights.shape)}"
        )
    return weights


def compute_per_token_policy_loss(
    policy_log_probs: Tensor,
    loss_type: LossType,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    cliprange: float | None = None,
    cliprange_high: float | None = None,
    response_mask: Tensor | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token policy-gradient loss of one of the :data:`LossType` surrogates.

    Args:
        policy_log_probs: (B, T) log-probs of the sampled tokens under the policy being trained.
        loss_type: one of ``no_baseline``, ``reinforce_with_baseline``, ``grpo_clip``,
            ``grpo_no_clip``, ``gspo``.
        raw_rewards: (B, 1) or (B,), needed by ``no_baseline``.
        advantages: (B, 1) or (B,), needed by every other loss type.
        old_log_probs: (B, T) log-probs under the policy that sampled (ratio-based types).
        cliprange: ε (or ε_low when ``cliprange_high`` is given) for the clipped types.
        cliprange_high: ε_high for asymmetric clipping (DAPO clip-higher); defaults to ``cliprange``.
        response_mask: (B, T), needed by ``gspo`` to average the log-ratio over response tokens.
        clip_ratio_c: dual clip (> 1) for the clipped types: where A < 0 the per-token loss is
            at most −c·A, however large the ratio (verl's ``clip_ratio_c``, e.g. 3); None: off.
        log_ratio_clamp: clamp log π − log π_old to ±this before ``exp``; None (CS336
            assignment 5's semantics, the default here): no clamp.

    Returns:
        (loss (B, T), metadata) with, for ratio types, ``ratio`` (B, T) and bool masks ``clipped``,
        ``clipped_low`` and ``clipped_high`` (B, T) marking tokens where the clipped branch won,
        and with ``clip_ratio_c``, ``clipped_dual`` (B, T) where the dual clip's bound won.
    """
    check_choice("loss_type", loss_type, list(_SURROGATES))
    spec = _SURROGATES[loss_type]
    batch = policy_log_probs.shape[0]
    weights = raw_rewards if spec.weights == "raw_rewards" else advantages
    if weights is None:
        raise ValueError(f"loss_type={loss_type!r} needs `{spec.weights}`; it was not given")
    weights = _as_column(spec.weights, weights, batch).to(policy_log_probs.dtype)  # (B, 1)

    if spec.ratio == "none":
        return -weights * policy_log_probs, {}

    if old_log_probs is None:
        raise ValueError(f"loss_type={loss_type!r} needs `old_log_probs`; it was not given")
    check_same_shape("old_log_probs", old_log_probs, "policy_log_probs", policy_log_probs)
    log_ratio = policy_log_probs - old_log_probs  # (B, T)
    if spec.ratio == "sequence":
        if response_mask is None:
            raise ValueError("loss_type='gspo' needs `response_mask` for its sequence-level ratio")
        check_same_shape("response_mask", response_mask, "policy_log_probs", policy_log_probs)
        # GSPO: s_i = exp(mean_t log-ratio), one ratio per sequence, broadcast over tokens.
        log_ratio = (
            guarded_masked_mean(log_ratio, response_mask, dim=-1).unsqueeze(-1).expand_as(log_ratio)
        )
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = ratio * weights
    meta: dict[str, Tensor] = {"ratio": ratio.detach()}
    if not spec.clip:
        return -unclipped, meta
    if cliprange is None:
        raise ValueError(f"loss_type={loss_type!r} needs `cliprange`; it was not given")
    low, high = cliprange, cliprange if cliprange_high is None else cliprange_high
    clipped = torch.clamp(ratio, 1.0 - low, 1.0 + high) * weights
    surrogate = torch.minimum(unclipped, clipped)  # (B, T)
    took_clip = (clipped < unclipped).detach()
    meta["clipped"] = took_clip
    meta["clipped_low"] = took_clip & (ratio.detach() < 1.0 - low)
    meta["clipped_high"] = took_clip & (ratio.detach() > 1.0 + high)
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (e.g. 3), got {clip_ratio_c}")
        # Where A < 0 a huge ratio makes −ratio·A unbounded; the dual clip caps the loss at −c·A.
        bound = (clip_ratio_c * weights).expand_as(surrogate)
        dual = (weights < 0) & (surrogate < bound)
        meta["clipped_dual"] = dual.detach()
        surrogate = torch.where(dual, bound, surrogate)
    return -surrogate, meta


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LossConfig:
    """The options of :func:`policy_loss`, one block (``model.init_args.loss`` in a config),
    validated when it is built: a wrong value stops a run before any model is loaded.

    Attributes:
        loss_type: ``no_baseline``, ``reinforce_with_baseline``, ``grpo_clip``, ``grpo_no_clip``
            or ``gspo`` (sequence-level ratio).
        cliprange: ε of the clipped types (ε_low with ``cliprange_high``); None only for the
            unclipped types.
        cliprange_high: ε_high (DAPO clip-higher, e.g. 0.28); None: symmetric.
        kl_coef: β of the KL penalty to the reference (initial) policy; 0: no KL term and no
            reference model.
        kl_estimator: ``k1``, ``k2`` or ``k3`` (Schulman 2020).
        aggregation: ``seq_mean_token_mean`` (GRPO), ``token_mean`` (DAPO) or
            ``seq_mean_token_sum_norm`` (Dr. GRPO, with ``normalize_constant``).
        normalize_constant: Dr. GRPO's constant (usually the max new tokens).
        tis_cap: importance sampling against the engine's log-probs: weight each token by
            min(π_old/π_engine, tis_cap); None: off.
        tis_level: ``token`` (one ratio per token) or ``sequence`` (the product over the
            response, TRL's ``sequence_*`` modes).
        tis_mode: ``truncate`` (min(ratio, cap)) or ``mask`` (drop where ratio > cap).
        clip_ratio_c: dual-clip PPO bound (> 1, verl's ``clip_ratio_c``, e.g. 3): with A < 0 a
            token's loss is at most −c·A; None: off.
        log_ratio_clamp: clamp log-ratios to ±this before ``exp`` (verl's 20); None: off.
        kl_clamp: clamp the per-token KL estimate to ±this (verl's 10); None: off.
    """

    loss_type: LossType = "grpo_clip"
    cliprange: float | None = 0.2
    cliprange_high: float | None = None
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    aggregation: Aggregation = "seq_mean_token_mean"
    normalize_constant: float = 1024.0
    tis_cap: float | None = None
    tis_level: ISLevel = "token"
    tis_mode: ISMode = "truncate"
    clip_ratio_c: float | None = None
    log_ratio_clamp: float | None = 20.0
    kl_clamp: float | None = 10.0

    def __post_init__(self) -> None:
        check_choice("loss_type", self.loss_type, list(_SURROGATES))
        check_choice("aggregation", self.aggregation, list(AGGREGATIONS))
        check_choice("kl_estimator", self.kl_estimator, list(get_args(KLEstimator)))
        check_choice("tis_level", self.tis_level, list(get_args(ISLevel)))
        check_choice("tis_mode", self.tis_mode, list(get_args(ISMode)))
        if _SURROGATES[self.loss_type].clip and self.cliprange is None:
            raise ValueError(f"loss_type={self.loss_type!r} needs `cliprange`; it was not given")
        # (field, value, lowest allowed, whether the lowest is allowed, an example)
        bounds = (
            ("cliprange", self.cliprange, 0.0, True, "0.2"),
            ("cliprange_high", self.cliprange_high, 0.0, True, "0.28"),
            ("kl_coef", self.kl_coef, 0.0, True, "0.04"),
            ("normalize_constant", self.normalize_constant, 0.0, False, "1024"),
            ("tis_cap", self.tis_cap, 0.0, False, "2"),
            ("clip_ratio_c", self.clip_ratio_c, 1.0, False, "3"),
            ("log_ratio_clamp", self.log_ratio_clamp, 0.0, False, "20"),
            ("kl_clamp", self.kl_clamp, 0.0, False, "10"),
        )
        for name, value, lowest, inclusive, example in bounds:
            if value is not None and (value < lowest or (value == lowest and not inclusive)):
                relation = ">=" if inclusive else ">"
                raise ValueError(
                    f"loss.{name} must be {relation} {lowest:g} (e.g. {example}), got {value}"
                )


LOSS_FIELDS = frozenset(f.name for f in fields(LossConfig))


# --------------------------------------------------------------------------- composable loss


def policy_loss(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    config: LossConfig | None = None,
    *,
    raw_rewards: Tensor | None = None,
    advantages: Tensor | None = None,
    old_log_probs: Tensor | None = None,
    ref_log_probs: Tensor | None = None,
    rollout_log_probs: Tensor | None = None,
    token_normalizer: float | None = None,
    sequence_normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The whole policy-gradient family in one function.

    per-token loss = w_tis · surrogate(loss_type) + β · KL_est(π ‖ π_ref), then aggregated.

    Args:
        policy_log_probs: (B, T) log-probs of the sampled tokens (with grad).
        response_mask: (B, T) 0/1, 1 on response tokens that count.
        config: the options (:class:`LossConfig`; default: GRPO's clipped surrogate, ε 0.2,
            no KL, no importance sampling).
        raw_rewards: (B, 1) or (B,), for ``no_baseline``.
        advantages: (B, 1) or (B,), for the other types.
        old_log_probs: (B, T), for ratio-based types (and the TIS numerator when given).
        ref_log_probs: (B, T) reference-policy log-probs, needed when ``kl_coef > 0``.
        rollout_log_probs: (B, T) the rollout engine's log-probs, needed when ``tis_cap`` is set:
            each token's surrogate is weighted by :func:`importance_weights` of (log p_old,
            log p_rollout), detached; log p_old is ``old_log_probs`` when given, else the
            detached policy log-probs (on-policy).
        token_normalizer: for ``token_mean`` across micro-batches (see :func:`aggregate_loss`).
        sequence_normalizer: for the ``seq_mean_*`` aggregations (see :func:`aggregate_loss`).

    Returns:
        (scalar loss, metrics): ``pg_loss``, ``kl`` (masked mean), ``clip_frac``,
        ``clip_frac_low``, ``clip_frac_high``, ``ratio_min``/``ratio_mean``/``ratio_max`` (masked),
        ``clip_frac_dual`` (with ``clip_ratio_c``), ``tis_weight_mean`` and
        ``tis_capped_frac`` (truncate mode) or ``tis_masked_frac`` (mask mode) — all detached;
        ratio/clip metrics only for ratio-based types.
    """
    c = config or LossConfig()
    check_same_shape("response_mask", response_mask, "policy_log_probs", policy_log_probs)
    per_token, meta = compute_per_token_policy_loss(
        policy_log_probs,
        c.loss_type,
        raw_rewards,
        advantages,
        old_log_probs,
        c.cliprange,
        c.cliprange_high,
        response_mask,
        c.clip_ratio_c,
        c.log_ratio_clamp,
    )
    mask = response_mask.to(policy_log_probs.dtype)
    metrics: dict[str, Tensor] = {}

    if c.tis_cap is not None:
        if rollout_log_probs is None:
            raise ValueError("loss.tis_cap is set but `rollout_log_probs` was not given")
        behaviour = old_log_probs if old_log_probs is not None else policy_log_probs
        tis_w = importance_weights(
            behaviour,
            rollout_log_probs,
            mask,
            c.tis_cap,
            c.tis_level,
            c.tis_mode,
            c.log_ratio_clamp,
        )
        per_token = per_token * tis_w
        metrics["tis_weight_mean"] = guarded_masked_mean(tis_w, mask).detach()
        if c.tis_mode == "mask":
            metrics["tis_masked_frac"] = guarded_masked_mean((tis_w == 0).to(mask.dtype), mask)
        else:  # tokens (or sequences) whose weight the cap truncated
            capped = (tis_w >= c.tis_cap).to(mask.dtype)
            metrics["tis_capped_frac"] = guarded_masked_mean(capped, mask).detach()

    metrics["pg_loss"] = aggregate_loss(
        per_token, mask, c.aggregation, c.normalize_constant, token_normalizer, sequence_normalizer
    ).detach()
    if c.kl_coef != 0.0 and ref_log_probs is None:
        raise ValueError(f"loss.kl_coef={c.kl_coef} needs `ref_log_probs`; it was not given")
    if ref_log_probs is not None:
        kl = kl_penalty(
            policy_log_probs, ref_log_probs, c.kl_estimator, c.log_ratio_clamp, c.kl_clamp
        )
        if c.kl_coef != 0.0:
            per_token = per_token + c.kl_coef * kl
        metrics["kl"] = guarded_masked_mean(kl, mask).detach()

    if "ratio" in meta:
        ratio = meta["ratio"]
        big = torch.finfo(ratio.dtype).max
        has = mask.sum() > 0
        metrics["ratio_mean"] = guarded_masked_mean(ratio, mask).detach()
        metrics["ratio_min"] = (
            torch.where(mask > 0, ratio, big).min() if has else ratio.new_tensor(1.0)
        )
        metrics["ratio_max"] = (
            torch.where(mask > 0, ratio, -big).max() if has else ratio.new_tensor(1.0)
        )
        for key in ("clipped", "clipped_low", "clipped_high", "clipped_dual"):
            if key in meta:
                name = "clip_frac" + key.removeprefix("clipped")
                metrics[name] = guarded_masked_mean(meta[key].to(mask.dtype), mask).detach()

    loss = aggregate_loss(
        per_token, mask, c.aggregation, c.normalize_constant, token_normalizer, sequence_normalizer
    )
    return loss, metrics


# --------------------------------------------------------------------------- SFT


def sft_loss(
    policy_log_probs: Tensor,
    response_mask: Tensor,
    aggregation: Literal["token_mean", "sum_norm"] = "token_mean",
    normalize_constant: float = 1.0,
    token_normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked negative log-likelihood.

    ``token_mean``: mean NLL over every response token of the batch, or the token sum ÷
    ``token_normalizer``, which keeps it exact across gradient accumulation (see
    :func:`aggregate_loss`). ``sum_norm`` (CS336's): mean over sequences of (−sum of masked
    log-probs ÷ ``normalize_constant``).
    """
    check_same_shape("response_mask", response_mask, "policy_log_probs", policy_log_probs)
    if aggregation == "token_mean":
        loss = -aggregate_loss(
            policy_log_probs, response_mask, "token_mean", token_normalizer=token_normalizer
        )
    elif aggregation == "sum_norm":
        loss = -masked_normalize(policy_log_probs, response_mask, normalize_constant, dim=-1).mean()
    else:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; accepted values: token_mean, sum_norm"
        )
    tokens = response_mask.sum()
    return loss, {"nll": loss.detach(), "response_tokens": tokens.detach().float()}
