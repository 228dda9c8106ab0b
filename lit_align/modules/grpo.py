"""GRPOModule: the policy-gradient family on rollouts served by the RolloutDataModule.

Per round (one epoch): old log-probs (when a round takes several optimizer steps) and reference
log-probs (when ``kl_coef`` > 0) are computed once, without grad, at the start of the epoch
(after the RolloutDataModule has generated the round, before its first batch is built); each
training step then computes the policy's log-probs and entropy and the loss of
:func:`lit_align.losses.policy_loss`; Lightning accumulates micro-batches and steps.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_align.contracts import RoundBuffer, round_data
from lit_align.losses import LOSS_FIELDS, LossConfig, kl_penalty, policy_loss
from lit_align.metrics import ENGINE_MISMATCH, KL_TO_ROLLOUT, LOSS, TOKEN_ENTROPY, TRAIN
from lit_align.modules.base import PolicyModule
from lit_align.ops import CausalLMLogProbs, guarded_masked_mean

__all__ = ["GRPOModule"]

_RATIO_LOSSES = ("grpo_clip", "grpo_no_clip", "gspo")


class GRPOModule(PolicyModule):
    """GRPO and its relatives (see :func:`lit_align.losses.policy_loss`).

    Args:
        loss: the policy loss's options, one block (:class:`~lit_align.losses.LossConfig`:
            ``loss_type``, ``cliprange``, ``kl_coef``, ``aggregation``, ``tis_cap``, …),
            validated when the module is built. Default: GRPO's clipped surrogate, ε 0.2, no KL.
        mismatch_warn_threshold: warn when the mean |log π_trainer − log π_engine| per response
            token of a round's first optimizer step (``train/engine_logprob_mismatch``, where the
            two policies must be equal) exceeds this many nats. float32 engines agree to ~1e-6
            and bf16 rounding gives ~1e-2; 0.05 (a per-token ratio of e^0.05 ≈ 1.05, e^25 over
            500 tokens) means the engine samples from another distribution: stale or wrong
            weights, another tokenizer or template, a kernel bug. None: never warn.
        **kwargs: model, optimizer, scheduler, validation sampling (see
            :class:`~lit_align.modules.base.PolicyModule`).
    """

    def __init__(
        self,
        *args: Any,
        loss: LossConfig = LossConfig(),
        mismatch_warn_threshold: float | None = 0.05,
        **kwargs: Any,
    ) -> None:
        moved = [k for k in kwargs if k in LOSS_FIELDS]
        if moved:  # a clear error, not a silent alias: the block is the one place
            raise TypeError(
                f"GRPOModule: {', '.join(moved)} moved into the loss block: "
                f"loss=LossConfig({moved[0]}=…) in Python, model.init_args.loss.{moved[0]} in a "
                "config"
            )
        super().__init__(*args, **kwargs)
        if isinstance(loss, dict):  # from a checkpoint's hyperparameters
            loss = LossConfig(**loss)
        self.loss = loss
        self.mismatch_warn_threshold = mismatch_warn_threshold
        self._mismatch = torch.zeros(2, dtype=torch.float64)  # (sum of |gap| over tokens, tokens)
        self.ref_policy: nn.Module | None = None
        # The reference is the initial policy: with LoRA, the same weights with the adapters
        # switched off (no copy); otherwise a frozen copy.
        self.uses_reference = self.loss.kl_coef > 0
        if self.uses_reference and self.lora is None:
            self.ref_policy = CausalLMLogProbs(copy.deepcopy(self.model), self.policy.chunk_tokens)
            self.ref_policy.requires_grad_(False).eval()
        self._round_first_step = True

    def sharded_roots(self) -> list[nn.Module]:
        return [self.policy] + ([self.ref_policy] if self.ref_policy is not None else [])

    def configure_optimizers(self) -> Any:
        # GRPO knows its step count without building a round (Lightning would ask for a dataloader).
        self._total_steps = round_data(self.trainer).steps_per_round * self.trainer.max_epochs
        return super().configure_optimizers()

    def total_optimizer_steps(self) -> int:
        return int(getattr(self, "_total_steps", 0)) or super().total_optimizer_steps()

    # ------------------------------------------------------------------ per round

    @torch.no_grad()
    def store_round_log_probs(self, buffer: RoundBuffer) -> None:
        """Old log-probs (when the round takes several optimizer steps) and reference log-probs
        (when ``kl_coef`` > 0) of a generated round, stored in its buffer, once per round."""
        data = round_data(self.trainer)
        needs_old = data.steps_per_round > 1
        if not needs_old and not self.uses_reference:
            return
        was_training = self.policy.training
        self.policy.eval()
        order = buffer.shortest_first()  # micro-batches of similar lengths: little padding
        for start in range(0, len(buffer), data.micro_batch_size):
            indices = order[start : start + data.micro_batch_size]
            batch = buffer.collate(indices, with_stored=False)
            ids, labels = batch["input_ids"].to(self.device), batch["labels"].to(self.device)
            where = batch["completion_mask"].to(self.device)  # only response tokens are stored
            if needs_old:
                buffer.store("old", indices, self.policy(ids, labels, positions=where)["log_probs"])
            if self.uses_reference:
                ref = self._reference(ids, labels, where)
                buffer.store("ref", indices, ref)
        self.policy.train(was_training)

    def _reference(
        self, ids: torch.Tensor, labels: torch.Tensor, where: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) log-probs of the reference (initial) policy at ``where``."""
        if self.ref_policy is not None:
            return self.ref_policy(ids, labels, positions=where)["log_probs"]
        with self.model.disable_adapter():  # LoRA: the frozen base is the initial policy
            return self.policy(ids, labels, positions=where)["log_probs"]

    def on_train_epoch_start(self) -> None:
        # The round was generated when Lightning reloaded the dataloader; batches are collated
        # only once the epoch iterates, after this hook.
        buffer = round_data(self.trainer).buffer
        if buffer is None:
            raise RuntimeError("GRPOModule: the DataModule generated no round before the epoch")
        self.store_round_log_probs(buffer)
        self._round_first_step = True
        self._mismatch.zero_()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:
            if self._round_first_step:
                self._check_mismatch()
            self._round_first_step = False

    def _check_mismatch(self) -> None:
        """Warn when the engine and the trainer disagree about the policy of the round."""
        total, tokens = self._mismatch.tolist()
        self._mismatch.zero_()
        gap = total / max(tokens, 1.0)
        threshold = self.mismatch_warn_threshold
        if threshold is not None and tokens > 0 and gap > threshold:
            rank_zero_warn(
                f"engine-vs-trainer log-prob mismatch {gap:.4g} nats/token at step "
                f"{self.global_step} (round {self.current_epoch}) is above "
                f"mismatch_warn_threshold {threshold}: the rollouts were sampled from another "
                "distribution than the policy being trained. Check that the engine received the "
                "policy's weights (each sync logs time/weight_sync_s), that engine and trainer use "
                "the same dtype and tokenizer, and consider tis_cap to correct for the gap."
            )

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # LM head, log-softmax and entropy on the completion tokens only (prompts need none)
        completion = batch["completion_mask"]
        out = self.policy(
            batch["input_ids"], batch["labels"], return_token_entropy=True, positions=completion
        )
        log_probs = out["log_probs"]  # (B, L), 0 outside the completions
        mask = batch["response_mask"]
        old = batch.get("old_log_probs")
        if old is None and self.loss.loss_type in _RATIO_LOSSES:
            old = log_probs.detach()  # on-policy: the sampling policy is the current one
        loss, metrics = policy_loss(
            log_probs,
            mask,
            self.loss,
            raw_rewards=batch["raw_rewards"],
            advantages=batch["advantages"],
            old_log_probs=old,
            ref_log_probs=batch.get("ref_log_probs"),
            rollout_log_probs=batch["rollout_log_probs"] if self.loss.tis_cap is not None else None,
            token_normalizer=batch["token_normalizer"],
            sequence_normalizer=batch["sequence_normalizer"],
        )
        size = mask.shape[0]
        self.log(LOSS, loss, on_step=True, prog_bar=True, batch_size=size)
        for name, value in metrics.items():
            self.log(f"{TRAIN}/{name}", value, on_step=True, batch_size=size)
        self.log(
            TOKEN_ENTROPY,
            guarded_masked_mean(out["token_entropy"].detach(), completion),
            on_step=True,
            batch_size=size,
        )
        # KL to the policy that sampled the round, whatever kl_coef is (verl logs it as ppo_kl):
        # the old log-probs when stored (several steps per round), else the engine's. k3 estimate.
        sampler = batch.get("old_log_probs", batch["rollout_log_probs"])
        kl = kl_penalty(log_probs.detach(), sampler, "k3")
        self.log(KL_TO_ROLLOUT, guarded_masked_mean(kl, completion), on_step=True, batch_size=size)
        if self._round_first_step:
            # Before the round's first optimizer step the policy is the rollout policy: any gap
            # between its log-probs and the engine's is engine/trainer numerical mismatch.
            diff = (log_probs.detach() - batch["rollout_log_probs"]).abs()
            gap = guarded_masked_mean(diff, completion)
            self.log(ENGINE_MISMATCH, gap, on_step=True, batch_size=size)
            self._mismatch += torch.tensor(
                [float((diff * completion).sum()), float(completion.sum())], dtype=torch.float64
            )
        self.log_throughput(int(batch["input_ids"].numel()))
        return loss
