"""Length aggregation of a (B, T) per-token loss: ``seq_mean_token_mean`` (GRPO), ``token_mean``
(DAPO, Yu et al. 2025), ``seq_mean_token_sum_norm`` (Dr. GRPO, Liu et al. 2025), exact under
gradient accumulation when given the window's normalizers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

from lit_align.estimators import check_choice, check_same_shape
from lit_align.ops import guarded_masked_mean, masked_normalize

__all__ = ["AGGREGATIONS", "Aggregation", "aggregate_loss"]

Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]


def _seq_mean(per_sequence: Tensor, sequences: float | None) -> Tensor:
    # (B,) → scalar: the batch mean, or the sum ÷ a window-wide sequence count.
    return per_sequence.mean() if sequences is None else per_sequence.sum() / sequences


def _agg_seq_mean_token_mean(
    loss: Tensor, mask: Tensor, constant: float, tokens: float | None, sequences: float | None
) -> Tensor:
    return _seq_mean(guarded_masked_mean(loss, mask, dim=-1), sequences)


def _agg_token_mean(
    loss: Tensor, mask: Tensor, constant: float, tokens: float | None, sequences: float | None
) -> Tensor:
    if tokens is None:
        return guarded_masked_mean(loss, mask)
    return masked_normalize(loss, mask, tokens)


def _agg_seq_mean_token_sum_norm(
    loss: Tensor, mask: Tensor, constant: float, tokens: float | None, sequences: float | None
) -> Tensor:
    return _seq_mean(masked_normalize(loss, mask, constant, dim=-1), sequences)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "seq_mean_token_mean": _agg_seq_mean_token_mean,
    "token_mean": _agg_token_mean,
    "seq_mean_token_sum_norm": _agg_seq_mean_token_sum_norm,
}


def aggregate_loss(
    per_token_loss: Tensor,
    response_mask: Tensor,
    aggregation: Aggregation = "seq_mean_token_mean",
    normalize_constant: float = 1.0,
    token_normalizer: float | None = None,
    sequence_normalizer: float | None = None,
) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    Args:
        per_token_loss: (B, T).
        response_mask: (B, T) 0/1.
        aggregation: ``seq_mean_token_mean`` (mean over each sequence's tokens, then over
            sequences), ``token_mean`` (mean over all tokens of the batch) or
            ``seq_mean_token_sum_norm`` (each sequence's token sum ÷ ``normalize_constant``, then
            mean over sequences).
        normalize_constant: the constant of ``seq_mean_token_sum_norm`` (e.g. max new tokens).
        token_normalizer: for ``token_mean`` under gradient accumulation: divide the token sum by
            this number instead of the micro-batch's own token count. Pass (tokens in the whole
            accumulation window) / (accumulation steps) to get DAPO's exact per-batch token mean.
        sequence_normalizer: the same for the ``seq_mean_*`` aggregations: divide the sum of the
            per-sequence values by this instead of B. Pass (sequences that count in the window) /
            (accumulation steps), so sequences dropped from the loss (an all-zero mask row) do not
            dilute the mean.
    """
    check_choice("aggregation", aggregation, list(AGGREGATIONS))
    check_same_shape("response_mask", response_mask, "per_token_loss", per_token_loss)
    return AGGREGATIONS[aggregation](
        per_token_loss, response_mask, normalize_constant, token_normalizer, sequence_normalizer
    )
