"""SFTModule: masked per-token negative log-likelihood on prompt/response pairs."""

from __future__ import annotations

from typing import Any, Literal

from lit_align.losses import sft_loss
from lit_align.metrics import LOSS, LOSS_EPOCH, NLL_PER_TOKEN, RESPONSE_TOKENS, TOKEN_ENTROPY
from lit_align.modules.base import PolicyModule
from lit_align.ops import guarded_masked_mean

__all__ = ["SFTModule"]


class SFTModule(PolicyModule):
    """Supervised fine-tuning with a masked per-token loss; Lightning accumulates and clips.

    Args:
        loss_aggregation: ``token_mean`` (mean NLL over the response tokens of the whole
            accumulation window, exact under gradient accumulation) or ``sum_norm`` (CS336
            assignment 5's: each sequence's summed NLL ÷ ``normalize_constant``, averaged over sequences).
        normalize_constant: divisor of ``sum_norm``.
        **kwargs: see :class:`~lit_align.modules.base.PolicyModule` (model, optimizer, scheduler,
            evaluator, validation sampling).
    """

    def __init__(
        self,
        *args: Any,
        loss_aggregation: Literal["token_mean", "sum_norm"] = "token_mean",
        normalize_constant: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if loss_aggregation not in ("token_mean", "sum_norm"):
            raise ValueError(
                f"unknown loss_aggregation {loss_aggregation!r}; accepted values: token_mean, sum_norm"
            )
        self.loss_aggregation = loss_aggregation
        self.normalize_constant = normalize_constant

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        mask = batch["response_mask"]  # (B, T)
        # LM head, log-softmax and entropy on the response tokens only (the loss needs no more)
        out = self.policy(
            batch["input_ids"], batch["labels"], return_token_entropy=True, positions=mask
        )
        loss, metrics = sft_loss(
            out["log_probs"],
            mask,
            self.loss_aggregation,
            self.normalize_constant,
            token_normalizer=batch.get("token_normalizer"),
        )
        batch_size = mask.shape[0]
        self.log(LOSS, loss, on_step=True, prog_bar=True, batch_size=batch_size)
        self.log(LOSS_EPOCH, loss, on_step=False, on_epoch=True, batch_size=batch_size)
        self.log(
            NLL_PER_TOKEN,
            guarded_masked_mean(-out["log_probs"].detach(), mask),
            batch_size=batch_size,
        )
        self.log(
            TOKEN_ENTROPY,
            guarded_masked_mean(out["token_entropy"].detach(), mask),
            batch_size=batch_size,
        )
        self.log(RESPONSE_TOKENS, metrics["response_tokens"], on_step=True, batch_size=batch_size)
        self.log_throughput(int(batch["input_ids"].numel()))
        return loss
