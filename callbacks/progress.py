"""One plain line per round (GRPO, expert iteration) or per N optimizer steps (SFT), readable in a
file log (nohup, SLURM) where a progress bar writes nothing useful."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import lightning as L

from lit_align.contracts import latest_round
from lit_align.metrics import (
    KL,
    KL_TO_ROLLOUT,
    LOSS,
    REWARD,
    ROLLOUT_ACCURACY,
    ROLLOUT_S,
    VAL_ACCURACY,
)

__all__ = ["ProgressLog", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _value(metrics: Mapping[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    return None if value is None else float(value)


def _epoch(trainer: L.Trainer) -> str:
    epochs = trainer.max_epochs
    if epochs is None or epochs < 1:  # a run bounded by max_steps
        return f"epoch {trainer.current_epoch + 1}"
    return f"epoch {min(trainer.current_epoch + 1, epochs)}/{epochs}"


class ProgressLog(L.Callback):
    """Print ``lit_align: round 3/30 · step 3 · reward 0.41 · …`` lines.

    Rollout DataModules (GRPO, expert iteration) get one line per round: round, optimizer step,
    the round's reward and accuracy, the KL to the reference (or, without one, to the policy
    that sampled the round, which is 0 on-policy), seconds of the round (rollout and training)
    and the ETA. SFT gets one line every ``every_n_steps`` optimizer steps and one at the end:
    step, epoch, loss, seconds per step and the ETA. Validation adds its accuracy to the next line. The lines go
    through the progress bar's ``print`` when one is shown, else to stdout, flushed.

    Args:
        every_n_steps: optimizer steps between lines when there are no rounds (SFT).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ProgressLog: every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._fit_start = 0.0
        self._epoch_start = 0.0
        self._round_end = 0.0
        self._epochs_done = 0
        self._last_step = 0
        self._last_time = 0.0
        self._steps_timed = 0
        self._seconds_timed = 0.0
        self._val: float | None = None

    # ------------------------------------------------------------------ output

    def _emit(self, trainer: L.Trainer, fields: list[str]) -> None:
        if not trainer.is_global_zero:
            return
        line = "lit_align: " + " · ".join(f for f in fields if f)
        bar = trainer.progress_bar_callback
        if bar is not None and getattr(bar, "is_enabled", False):
            bar.print(line)
        else:
            print(line, file=sys.stdout, flush=True)

    def _val_field(self) -> str:
        if self._val is None:
            return ""
        field, self._val = f"{VAL_ACCURACY} {self._val:.3f}", None
        return field

    # ------------------------------------------------------------------ hooks

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = self._last_time = self._round_end = time.perf_counter()
        self._last_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._val = _value(trainer.callback_metrics, VAL_ACCURACY)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            self._step_line(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_line(trainer)  # the last steps, and the last validation, are said too

    def _step_line(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if latest_round(trainer) is not None or step == self._last_step:
            return
        now = time.perf_counter()
        per_step = (now - self._last_time) / (step - self._last_step)
        self._steps_timed += step - self._last_step
        self._seconds_timed += now - self._last_time
        self._last_step, self._last_time = step, now
        total = int(trainer.estimated_stepping_batches)
        mean = self._seconds_timed / self._steps_timed
        loss = _value(trainer.callback_metrics, LOSS)
        self._emit(
            trainer,
            [
                f"step {step}/{total}",
                _epoch(trainer),
                f"loss {loss:.4f}" if loss is not None else "",
                self._val_field(),
                f"{per_step:.2f} s/step",
                f"ETA {format_duration(mean * max(0, total - step))}",
            ],
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        latest = latest_round(trainer)
        if latest is None:
            return
        now = time.perf_counter()
        self._epochs_done += 1
        # The round is generated when Lightning reloads the loader, before this epoch's start:
        # a round is the time between two round ends (the first includes any initial validation).
        seconds, self._round_end = now - self._round_end, now
        train = now - self._epoch_start
        rollout = _value(latest.metrics, ROLLOUT_S)
        logged = trainer.callback_metrics
        metrics = latest.metrics
        reward = _value(metrics, REWARD)
        accuracy = _value(metrics, ROLLOUT_ACCURACY)
        kl = _value(logged, KL)
        kl_field = f"kl {kl:.4f}" if kl is not None else ""
        if kl is None and (kl := _value(logged, KL_TO_ROLLOUT)) is not None:
            # 0 by construction when each round is one optimizer step (on-policy)
            kl_field = f"kl_to_rollout {kl:.4f}"
        done = trainer.current_epoch + 1
        total = trainer.max_epochs or done
        mean = (now - self._fit_start) / self._epochs_done
        timing = f"{seconds:.1f} s/round (train {train:.1f} s"
        timing += f", rollout {rollout:.1f} s)" if rollout is not None else ")"
        self._emit(
            trainer,
            [
                f"round {done}/{total}",
                f"step {trainer.global_step}",
                f"reward {reward:.3f}" if reward is not None else "",
                f"accuracy {accuracy:.3f}" if accuracy is not None else "",
                kl_field,
                self._val_field(),
                timing,
                f"ETA {format_duration(mean * max(0, total - done))}",
            ],
        )
