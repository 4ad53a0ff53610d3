"""The training tab's plots: loss per step (raw and smoothed), loss per epoch, learning rate
and d·lr per parameter group, and memory. ``TrainingPlots`` routes engine metrics into them
and redraws all of them at most ~10 times a second, whatever the event rate."""

from __future__ import annotations

import time
from typing import Callable

from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtWidgets import QLabel, QSlider

from gui import theme
from gui.plots import MEMORY_MIN_SPAN_MB, LivePlot
from gui.series import SmoothedSeries, Throttle

DEFAULT_SMOOTHING = 0.9
VALIDATION = "validation"  # the loss plot's series of the validation loss


class LossPlot(LivePlot):
    def __init__(self) -> None:
        super().__init__("Loss per step", "step", "loss")
        self.loss = SmoothedSeries(DEFAULT_SMOOTHING)
        self.add_series("raw", theme.RAW, width=1, buffer=self.loss.raw)
        self.add_series("smoothed", theme.SMOOTH, width=2, buffer=self.loss.smoothed)
        self._pending_weight: float | None = None
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 99)
        self.slider.setValue(round(DEFAULT_SMOOTHING * 100))
        self.slider.setFixedWidth(90)
        self.slider.setToolTip("TensorBoard-style smoothing of the loss curve (0 = raw, 0.99 = very smooth)")
        self.slider.valueChanged.connect(self._on_slider_value_changed)
        self.smoothing_label = QLabel()
        self.smoothing_label.setStyleSheet("font-size: 8pt")
        self._show_smoothing(DEFAULT_SMOOTHING)
        self.header.insertWidget(1, self.smoothing_label)
        self.header.insertWidget(2, self.slider)

    def add_point(self, step: float, loss: float) -> None:
        self.loss.append(step, loss)
        self._dirty.update(("raw", "smoothed"))

    def add_validation_point(self, step: float, loss: float) -> None:
        """The validation loss, on the same axes as the training loss: its own colour and
        markers, added to the legend when a run has a validation set."""
        if not self.has_series(VALIDATION):
            self.add_series(VALIDATION, theme.VALIDATION, width=1.5, symbol="o")
        self.append(VALIDATION, step, loss)

    @property
    def smoothing(self) -> float:
        return self._pending_weight if self._pending_weight is not None else self.loss.weight

    def set_smoothing(self, weight: float) -> None:
        self.slider.setValue(round(weight * 100))

    def _on_slider_value_changed(self, value: int) -> None:
        # Recomputing 100k points takes tens of ms: do it once on the next redraw, not on
        # every slider position passed while dragging.
        self._pending_weight = value / 100
        self._show_smoothing(self._pending_weight)
        self.mark_dirty("smoothed")

    def _show_smoothing(self, weight: float) -> None:
        self.smoothing_label.setText(f"smoothing {weight:.2f}")

    def refresh(self) -> bool:
        if self._pending_weight is not None:
            self.loss.set_weight(self._pending_weight)
            self._pending_weight = None
            self._dirty.add("smoothed")
        return super().refresh()

    def clear(self) -> None:
        self.loss.clear()
        super().clear()
        if self.has_series(VALIDATION):  # the next run may have no validation set
            self.remove_series(VALIDATION)


class EpochLossPlot(LivePlot):
    NOTE = "The mean loss of each epoch appears when the first whole epoch ends"

    def __init__(self) -> None:
        super().__init__("Loss per epoch", "epoch", "mean loss")
        self.add_series("mean loss", theme.SERIES[1], symbol="o")
        self.show_note(self.NOTE)

    def add_point(self, epoch: int, mean_loss: float) -> None:
        self.show_note("")
        self.append("mean loss", epoch, mean_loss)

    def clear(self) -> None:
        super().clear()
        self.show_note(self.NOTE)


class GroupPlot(LivePlot):
    """One curve per parameter group ("unet", "text_encoder"), created as groups appear."""

    def add_point(self, step: float, values: dict[str, float]) -> None:
        for group, value in values.items():
            if not self.has_series(group):
                self.add_series(group, theme.SERIES[len(self.series_names()) % len(theme.SERIES)])
            self.append(group, step, value)

    def clear(self) -> None:
        super().clear()
        for name in self.series_names():
            self.remove_series(name)


class DlrPlot(GroupPlot):
    NOTE = "DLR appears with Prodigy and D-Adaptation"

    def __init__(self) -> None:
        super().__init__("Adapted learning rate (d·lr)", "step", "d·lr", log_y=True)
        # Only optimizers that adapt their step size report d·lr.
        self.show_note(self.NOTE)

    @property
    def active(self) -> bool:
        return self.plot_widget.isVisibleTo(self)

    def add_point(self, step: float, values: dict[str, float]) -> None:
        if values and not self.active:
            self.show_note("")
        super().add_point(step, values)

    def clear(self) -> None:
        super().clear()
        self.show_note(self.NOTE)


class MemoryPlot(LivePlot):
    """Memory in use, the training phase's peak and the run's peak (which loading or caching
    can set). On a GPU the training peak is shown allocated (tensors) and reserved (what the
    allocator holds, what must fit on the card). A CPU run measures the process's resident
    memory, and the plot says so: every number shown must be what was measured."""

    LABELS = {
        # Short names: the legend shares the title line of a plot ~410 px wide at 1280x720.
        "cuda": ("VRAM", "VRAM (MB)", ("allocated", "training peak", "training reserved", "run peak")),
        "rss": ("Process memory", "RSS (MB)", ("RSS", "training peak", None, "run peak")),
    }

    def __init__(self) -> None:
        super().__init__("Memory", "step", "memory (MB)")
        self.set_min_y_span(MEMORY_MIN_SPAN_MB)
        self.kind: str | None = None
        self._names: tuple[str | None, ...] = ()

    def add_point(self, step: float, allocated_mb: float, peak_mb: float, kind: str,
                  peak_reserved_mb: float = 0.0, run_peak_mb: float = 0.0) -> None:
        if kind != self.kind:
            self._use_kind(kind)
        now, peak, reserved, run_peak = self._names
        self.append(now, step, allocated_mb)
        self.append(peak, step, peak_mb)
        if reserved and peak_reserved_mb > 0:  # 0: metrics from before reserved peaks were reported
            self.append(reserved, step, peak_reserved_mb)
        self.append(run_peak, step, max(run_peak_mb, peak_mb))

    def _use_kind(self, kind: str) -> None:
        for name in self.series_names():
            self.remove_series(name)
        title, axis, names = self.LABELS.get(kind, (kind, f"{kind} (MB)", ("current", "peak", None, "run peak")))
        self.kind, self._names = kind, names
        self.set_axis_labels("step", axis)
        now, peak, reserved, run_peak = names
        self.add_series(now, theme.SERIES[0])
        self.add_series(peak, theme.SERIES[3], width=1, dashed=True)  # often equal: both stay visible
        if reserved:
            self.add_series(reserved, theme.SERIES[1], width=1, dashed=True)
        self.add_series(run_peak, theme.SERIES[4], width=1, dashed=True)
        self.set_title(title)

    def clear(self) -> None:
        super().clear()
        self.kind = None


class TrainingPlots(QObject):
    """All plots of a run, fed per event (cheap appends) and redrawn per tick (throttled)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.loss = LossPlot()
        self.epoch_loss = EpochLossPlot()
        self.lr = GroupPlot("Learning rate", "step", "learning rate")
        self.dlr = DlrPlot()
        self.memory = MemoryPlot()
        self.throttle = Throttle(0.1, clock=clock)
        self._clock = clock
        self.redraws = 0
        self.last_redraw_s = 0.0
        self._queue: list[LivePlot] = []
        self._cycle_s = 0.0
        for plot in self.all:
            # A slot of this QObject, so the connection ends when the plots do.
            plot.changed.connect(self._on_plot_changed)

    @property
    def all(self) -> list[LivePlot]:
        return [self.loss, self.epoch_loss, self.lr, self.dlr, self.memory]

    @Slot()
    def _on_plot_changed(self) -> None:
        self.throttle.mark()

    def add_step(self, metrics: object) -> None:
        step = metrics.step
        self.loss.add_point(step, metrics.loss)
        self.lr.add_point(step, metrics.lr)
        if metrics.dlr:
            self.dlr.add_point(step, metrics.dlr)
        self.memory.add_point(step, metrics.memory_allocated_mb, metrics.memory_peak_mb, metrics.memory_kind,
                              getattr(metrics, "memory_peak_reserved_mb", 0.0), getattr(metrics, "memory_run_peak_mb", 0.0))
        self.throttle.mark()

    def add_epoch(self, metrics: object) -> None:
        self.epoch_loss.add_point(metrics.epoch, metrics.mean_loss)
        self.throttle.mark()

    def add_validation(self, metrics: object) -> None:
        """A ValidationMetrics event."""
        self.loss.add_validation_point(metrics.step, metrics.loss)
        self.throttle.mark()

    def tick(self) -> bool:
        """Refresh one plot per tick, cycling through them when new data arrived and the
        throttle allows; True when it drew. Qt paints what changed in one event-loop pass,
        so refreshing the plots on successive ticks keeps each pass (each stall of the
        window) to one plot's paint instead of all of them at once."""
        if not self._queue:
            if not self.throttle.due():
                return False
            self._queue = list(self.all)
            self._cycle_s = 0.0
        started = time.perf_counter()
        self._queue.pop(0).refresh()
        self._cycle_s += time.perf_counter() - started
        if not self._queue:
            self.last_redraw_s = self._cycle_s
            self.throttle.took(self._cycle_s)
            self.redraws += 1
        return True

    def redraw_now(self) -> None:
        self._queue = []
        started = time.perf_counter()
        for plot in self.all:
            plot.refresh()
        self.last_redraw_s = time.perf_counter() - started
        self.throttle.took(self.last_redraw_s)
        self.redraws += 1

    def clear(self) -> None:
        for plot in self.all:
            plot.clear()
        self.throttle.reset()
