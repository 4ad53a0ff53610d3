"""The run's summary.json: written "running" when the folder opens, and completed with the
outcome and the headline numbers when the run ends, however it ends."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from core.config.schema import TrainConfig
from core.data.batching import StepPlan
from core.system.processes import this_process
from core.training.memory import PhasePeaks
from core.training.progress import Progress
from core.training.run_folder import RunSummary

log = logging.getLogger("lorakiln.run")


class SummaryKeeper:
    def __init__(self) -> None:
        self.summary: RunSummary | None = None  # None until the run folder is opened
        self.vram_forecast: dict[str, Any] | None = None  # core.training.run_forecast's, when made

    def start(self, run_dir: Path, config: TrainConfig, steps: StepPlan, started_at: float,
              memory: PhasePeaks) -> None:
        self.summary = RunSummary(status="running", name=config.output.output_name,
                                  total_steps=steps.max_train_steps, total_epochs=steps.epochs,
                                  started_at=started_at,
                                  memory_kind=memory.kind, memory_method=memory.method,
                                  runner=this_process(), vram_forecast=self.vram_forecast)
        self.summary.write(run_dir)

    def validation(self, loss: float, progress: Progress) -> None:
        """Keeps the last validation loss, and the run's best from ``progress``."""
        summary = self.summary
        if summary is None:
            return
        summary.validation_loss = loss
        summary.best_validation_loss, summary.best_validation_step = (progress.best_validation_loss,
                                                                      progress.best_validation_step)

    def write_again(self, run_dir: Path) -> None:
        """Into a run folder that was deleted and made again."""
        if self.summary is not None:
            self.summary.write(run_dir)

    def complete(self, run_dir: Path, status: str, progress: Progress, memory: PhasePeaks | None,
                 lora_path: str | None, wall: float, skipped_steps: int, error: str | None = None) -> None:
        summary = self.summary
        if summary is None:  # the run ended before its folder was opened
            return
        summary.status, summary.steps, summary.epochs = status, progress.step, progress.epoch
        summary.wall_seconds = wall
        if memory is not None:
            summary.peak_vram_mb, summary.peak_reserved_mb = memory.overall()
            summary.peak_by_phase = memory.by_phase()
        summary.final_loss = progress.window.last
        # The last whole epoch's mean, or none: an epoch cut short (by max steps, Stop or a
        # failure) has no epoch loss, so runs compare whole epochs with whole epochs.
        summary.mean_last_epoch_loss = progress.last_epoch_mean
        summary.lora_path, summary.finished_at, summary.error = lora_path, time.time(), error
        summary.last_checkpoint, summary.skipped_steps = progress.last_checkpoint, skipped_steps
        # A resumed session that never validated still reports the best of the sessions before it.
        summary.best_validation_loss, summary.best_validation_step = (progress.best_validation_loss,
                                                                      progress.best_validation_step)
        try:
            summary.write(run_dir)
        except OSError as err:  # a full disk must not hide the original outcome
            log.error("could not write the summary: %s", err)
