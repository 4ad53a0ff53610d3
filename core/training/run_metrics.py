"""The run's curves on disk: metrics.jsonl (every step, skip, epoch, checkpoint and sample) and,
when logging is on, TensorBoard event files with Kohya's tag names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from core.training.events import StepMetrics, ValidationMetrics
from core.training.run_folder import METRICS, MetricsWriter
from core.training.tensorboard import EventWriter, lr_tag


class RunMetrics:
    def __init__(self, before_write: Callable[[], None]) -> None:
        # Called before each record: it makes a deleted run folder again (and reopens us).
        self._before_write = before_write
        self._metrics: MetricsWriter | None = None
        self._tensorboard: EventWriter | None = None

    def open(self, run_dir: Path, tensorboard: bool) -> None:
        self._metrics = MetricsWriter(run_dir / METRICS)
        if tensorboard:
            self._tensorboard = EventWriter(run_dir / "tensorboard")

    def record(self, record: dict[str, Any]) -> None:
        self._before_write()
        if self._metrics is not None:
            self._metrics.write(record)

    def step(self, metrics: StepMetrics) -> None:
        record = {"type": "step", **{k: v for k, v in metrics.__dict__.items() if k != "total_steps"}}
        self.record(record)
        if self._tensorboard:
            values = {"loss/current": metrics.loss, "loss/average": metrics.avg_loss}
            values.update({lr_tag(name): value for name, value in metrics.lr.items()})
            values.update({lr_tag(name, "lr/d*lr/"): value for name, value in metrics.dlr.items()})
            values.update({f"max_norm/{name}": value for name, value in metrics.max_norm.items()})
            self._tensorboard.scalars(values, metrics.step)

    def epoch(self, epoch: int, step: int, mean: float) -> None:
        self.record({"type": "epoch", "epoch": epoch, "step": step, "mean_loss": mean})
        if self._tensorboard:
            self._tensorboard.scalars({"loss/epoch_average": mean}, epoch)

    def partial_epoch(self, epoch: int, mean: float) -> None:
        """An epoch cut short by max_train_steps: no epoch record (it is not an epoch's loss),
        but TensorBoard gets sd-scripts' loss/epoch_average of the steps it ran, as sd-scripts
        writes it, so the two tools' TensorBoard curves stay comparable."""
        if self._tensorboard:
            self._tensorboard.scalars({"loss/epoch_average": mean}, epoch)

    def validation(self, metrics: ValidationMetrics) -> None:
        self.record({"type": "validation", **metrics.__dict__})
        if self._tensorboard:  # sd-scripts' tags for the mean of a validation pass
            tag = "loss/validation/epoch_average" if metrics.when == "epoch" else "loss/validation/step_average"
            self._tensorboard.scalars({tag: metrics.loss}, metrics.step)

    def close(self) -> None:
        for closer in (self._metrics, self._tensorboard):
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass
        self._metrics = self._tensorboard = None
