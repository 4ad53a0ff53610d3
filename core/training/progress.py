"""Where a run stands: step, epoch, the losses behind the running average, and training time.

One object owned by the engine, read by the checkpoints (the saved state) and the summary,
so every number they write comes from one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core.training.checkpoint import TrainingState
from core.training.metrics import EpochWindowAverage


@dataclass
class Progress:
    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0  # micro-batches of `epoch` already trained (by this process)
    # Where the training loop starts: a resumed run goes on inside the epoch it saved.
    start_epoch: int = 1
    skip_batches: int = 0
    wall_before: float = 0.0  # training time of earlier sessions of a resumed run
    skipped_before: int = 0  # steps earlier sessions skipped for a NaN/inf loss
    train_started: float | None = None  # perf_counter() when this session's training loop began
    # The running loss and this epoch's step losses as of the last step that counted (or the
    # stop): what a saved state carries on and the summary reports.
    window: EpochWindowAverage = field(default_factory=lambda: EpochWindowAverage(1))
    epoch_losses: list[float] = field(default_factory=list)
    last_epoch_mean: float | None = None
    last_checkpoint: str | None = None  # the newest LoRA file written, final included
    resumed: TrainingState | None = None
    # The lowest validation loss of all sessions and its step (the saved state carries it on).
    best_validation_loss: float | None = None
    best_validation_step: int | None = None

    def take_resumed(self, state: TrainingState) -> None:
        """Where the saved state left off."""
        self.step, self.start_epoch, self.skip_batches = state.step, state.epoch, state.batch_in_epoch
        self.wall_before = state.wall_seconds
        self.skipped_before = state.skipped_steps
        if isinstance(state.best_validation_loss, float) and isinstance(state.best_validation_step, int):
            self.best_validation_loss, self.best_validation_step = state.best_validation_loss, state.best_validation_step
        self.resumed = state

    def validated(self, loss: float, step: int) -> float:
        """Keeps the lowest validation loss and its step; returns the lowest so far."""
        if self.best_validation_loss is None or loss < self.best_validation_loss:
            self.best_validation_loss, self.best_validation_step = loss, step
        return self.best_validation_loss

    def wall_seconds(self) -> float:
        """Training time of all sessions so far (none of this one before its loop began)."""
        if self.train_started is None:
            return self.wall_before
        return self.wall_before + time.perf_counter() - self.train_started
