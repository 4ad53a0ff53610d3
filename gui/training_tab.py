"""The Training tab: start, pause, stop and cancel a run of the open project and watch it —
progress, live plots, samples and a log — and the queue of runs to train one after another. The engine runs in ``TrainingWorker``'s thread; this
tab only receives its events (queued signals) and sends commands through it."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (QGridLayout, QMessageBox, QPlainTextEdit, QProgressBar, QSplitter,
                               QVBoxLayout, QWidget)

from core.training.events import (CheckpointSaved, EpochMetrics, Failed, Finished, PhaseProgress, RunStarted,
                                  SampleImage, Status, StepMetrics, StepSkipped, ValidationMetrics)
from core.config.params import FieldError
from core.training.metrics import PhaseTimes, format_duration, format_rate
from core.training.vram_advice import Suggestion, gib
from gui.error_dialog import ErrorDialog
from core.studies.run_queue import RunQueue
from core.system.words import count
from gui.project import Project
from gui.queue_panel import QueuePanel
from gui.run_list import report
from gui.run_controls import IDLE, PAUSED, RUNNING, STOPPING, RunControls
from gui.sample_strip import SampleStrip
from gui.training_plots import TrainingPlots
from gui.vram_dialog import CANCEL, START, VramStartDialog
from gui.vram_forecaster import VramForecaster, VramState
from gui.vram_panel import VramPanel
from gui.worker import TrainingWorker

TICK_MS = 20  # one plot per tick: a cycle through the five plots fits in the 100 ms throttle
LOG_LINES = 5000
PHASE_NAMES = {"loading": "Loading", "caching": "Caching latents", "training": "Training", "paused": "Paused",
               "sampling": "Sampling", "saving": "Saving"}


class TrainingTab(QWidget):
    run_finished = Signal(object)  # Finished or Failed
    running_changed = Signal(bool)
    run_started = Signal(str)  # the run folder, as soon as the engine has made it

    def __init__(self, project: Project, parent: QWidget | None = None, queue: RunQueue | None = None,
                 vram: VramForecaster | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.vram = vram if vram is not None else VramForecaster(project, self)
        self.vram_dialog: VramStartDialog | None = None  # the check before Start, while it is open
        self.queue = queue if queue is not None else RunQueue.load()
        self.state = IDLE
        self.run_config = None  # the snapshot the current (or last) run trains
        self.run_dir: str | None = None
        self.last_result: Finished | Failed | None = None
        self._blocked: list[str] = []
        self._total_steps = self._epochs = self._skipped = 0
        self._latest: StepMetrics | None = None
        self._progress_dirty = False
        self._last_status = ""
        self._logged_training = False
        self._phase = ""  # the engine's current phase, as its last Status or PhaseProgress said
        self._phase_times = PhaseTimes()
        self._ended = ""  # how the last run ended ("completed", "stopped", ...), once it has

        self._worker = TrainingWorker()
        self._worker.event.connect(self._on_worker_event)
        self._worker.finished.connect(self._on_worker_finished)
        self.plots = TrainingPlots()
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._on_redraw_timer_timeout)
        self._timer.start()
        self._update_buttons()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.controls = RunControls()
        controls = self.controls
        # The buttons under their own names: the main window and tests reach them here.
        self.start_button, self.pause_button = controls.start_button, controls.pause_button
        self.stop_button, self.cancel_button = controls.stop_button, controls.cancel_button
        self.save_button, self.sample_button = controls.save_button, controls.sample_button
        self.queue_button, self.sweep_button = controls.queue_button, controls.sweep_button
        self.resume_run_button = controls.resume_run_button
        self.status_label, self.blocked_label = controls.status_label, controls.blocked_label
        for button, slot in ((self.start_button, self._on_start_button_clicked),
                             (self.pause_button, self._on_pause_button_clicked),
                             (self.stop_button, self._on_stop_button_clicked),
                             (self.cancel_button, self._on_cancel_button_clicked),
                             (self.save_button, self._on_save_button_clicked),
                             (self.sample_button, self._on_sample_button_clicked),
                             (self.queue_button, self._on_queue_button_clicked),
                             (self.sweep_button, self._on_sweep_button_clicked),
                             (self.resume_run_button, self._on_resume_run_button_clicked)):
            button.clicked.connect(slot)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("not started")

        grid_widget = QWidget()
        grid = QGridLayout(grid_widget)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        self.samples = SampleStrip()
        samples_box = self.samples.titled("Samples")
        plots = self.plots
        for widget, row, column in ((plots.loss, 0, 0), (plots.epoch_loss, 0, 1), (samples_box, 0, 2),
                                    (plots.lr, 1, 0), (plots.dlr, 1, 1), (plots.memory, 1, 2)):
            grid.addWidget(widget, row, column)
        for column in range(3):
            grid.setColumnStretch(column, 1)

        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setPlaceholderText("Status messages, checkpoints, epoch summaries and errors appear here.")
        self.queue_panel = QueuePanel(self.queue, self)
        self.queue_panel.queue_finished.connect(self._update_buttons)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.log)
        bottom.addWidget(self.queue_panel)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(grid_widget)
        splitter.addWidget(bottom)
        splitter.setStretchFactor(0, 4)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([640, 200])  # room for a handful of log lines and queue items from the start

        self.vram_panel = VramPanel(self.vram)
        layout = QVBoxLayout(self)
        layout.addWidget(controls)
        layout.addWidget(self.vram_panel)
        layout.addWidget(self.progress)
        layout.addWidget(splitter, 1)

    # ---------------------------------------------------------------- public API
    def start(self, config: object | None = None, resume_from: Path | None = None) -> bool:
        """Train the project's current settings (a snapshot: later edits do not reach the
        run), or ``config`` when given; ``resume_from`` continues a stopped run's folder.
        False when a run is going or starting is blocked."""
        if self.is_running() or self._blocked or self.queue_panel.running:
            return False
        config = config if config is not None else self.project.snapshot()
        self._start_run(config, self.project.description, self.project.base_dir, resume_from,
                        f"starting “{config.output.output_name}”")
        return True

    def start_queued(self, config: object, description: str, label: str) -> bool:
        """Train a queued item's configuration (the queue checked it; the project's own
        problems do not block it). False when a run is going."""
        if self.is_running():
            return False
        self._start_run(config, description, None, None, f"queue: starting “{label}”")
        return True

    def _start_run(self, config: object, description: str, base_dir: Path | None, resume_from: Path | None,
                   log_line: str) -> None:
        self.run_config = config
        self._reset_view()
        self._worker.start(self.run_config, description, base_dir, resume_from)
        self._append_log(log_line)
        self._set_state(RUNNING)
        self.status_label.setText("Starting…")
        self.progress.setRange(0, 0)  # busy until the engine reports a phase with a size
        self.progress.setFormat("starting…")
        self.running_changed.emit(True)

    def is_running(self) -> bool:
        return self.state != IDLE

    def resumable_run(self) -> Path | None:
        """The folder of the last run when it was stopped (or failed) before its plan ended and
        saved a training state to go on from; None otherwise."""
        result = self.last_result
        if self.is_running() or result is None or not self.run_dir:
            return None
        if isinstance(result, Finished) and result.reason not in ("stopped", "interrupted"):
            return None
        from core.training.checkpoint import STATE_DIR, latest_state  # torch: only once a run has ended

        run_dir = Path(self.run_dir)
        return run_dir if latest_state(run_dir / STATE_DIR) is not None else None

    def resume_run(self, run_dir: str | Path) -> bool:
        """Train a stopped run's folder further with its own settings (its config.toml).
        False, after saying why, when its settings cannot be read or a run is going."""
        from core.config.presets import PresetError, load_preset
        from core.training.run_folder import CONFIG

        run_dir = Path(run_dir)
        try:
            loaded = load_preset(run_dir / CONFIG)
        except PresetError as error:
            self.show_message("Cannot resume", f"{run_dir / CONFIG}: {error}")
            return False
        if self.is_running() or self.queue_panel.running:
            self.show_message("Cannot resume", "A run is going: resume once it has ended.")
            return False
        self._start_run(loaded.config, loaded.description, run_dir, run_dir, f"resuming {run_dir}")
        return True

    def use_queue(self, queue: RunQueue) -> None:
        """Work on another queue file (tests; a queue opened elsewhere)."""
        self.queue = self.queue_panel.queue = queue
        self.queue_panel.refresh()

    def request_stop_and_wait(self, timeout_ms: int) -> bool:
        """Stop (the LoRA is saved) and block until the run has ended: for closing the
        window mid-run. True when it ended within ``timeout_ms``."""
        if not self.is_running():
            return True
        self.stop()
        return self._worker.wait(timeout_ms)

    @property
    def blocked_reasons(self) -> list[str]:
        """Why Start is disabled (empty when it is not)."""
        return list(self._blocked)

    def set_start_blocked(self, reasons: list[str]) -> None:
        """While the configuration has errors, Start is disabled and says why."""
        self._blocked = list(reasons)
        self.controls.show_blocked(self._blocked)
        self._update_buttons()

    def pause(self) -> None:
        if self.state == RUNNING:
            self._worker.pause()
            self._set_state(PAUSED)
            self.status_label.setText("Pausing after this step…")

    def resume(self) -> None:
        if self.state == PAUSED:
            self._worker.resume()
            self._set_state(RUNNING)
            self.status_label.setText("Resuming…")

    def stop(self) -> None:
        if self.state in (RUNNING, PAUSED):
            self._worker.stop()
            self._set_state(STOPPING)
            self.status_label.setText("Stopping: finishing this step and saving…")
            self._append_log("stop requested: the LoRA will be saved")

    def cancel(self, confirm: bool = True) -> bool:
        if self.state not in (RUNNING, PAUSED) or (confirm and not self.confirm_cancel()):
            return False
        self._worker.cancel()
        self._set_state(STOPPING)
        self.status_label.setText("Cancelling…")
        self._append_log("cancel requested: nothing more will be saved")
        return True

    def save_now(self) -> None:
        if self.state in (RUNNING, PAUSED):
            self._worker.save_now()
            self._append_log("save requested: a checkpoint follows this step" if self.state == RUNNING
                             else "save requested: a checkpoint is saved now, while paused")

    def sample_now(self) -> None:
        if self.state in (RUNNING, PAUSED):
            self._worker.sample_now()
            self._append_log("samples requested after this step" if self.state == RUNNING
                             else "samples requested: made now, while paused")

    def confirm_cancel(self) -> bool:
        answer = QMessageBox.question(
            self, "Cancel training", "Cancel without saving?\n\nThe run ends now; training since the last "
            "checkpoint is lost.", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def show_message(self, title: str, text: str) -> None:
        """A message through the window's hook (tests replace this, or the window's)."""
        report(self, title, text)

    def show_error(self, failed: Failed) -> None:
        """Shows the error dialog; tests replace this to capture the failure instead."""
        dialog = ErrorDialog(failed, self)  # owned by the tab until closed
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()

    # ---------------------------------------------------------------- state
    def _set_state(self, state: str) -> None:
        self.state = state
        self._update_buttons()

    def _update_buttons(self) -> None:
        self.resume_run_button.setVisible(self.resumable_run() is not None)
        has_prompts = self.run_config is not None and bool(self.run_config.sampling.prompts.strip())
        self.controls.show_state(self.state, blocked=bool(self._blocked), has_prompts=has_prompts,
                                 queue_running=self.queue_panel.running)

    def _reset_view(self) -> None:
        self.plots.clear()
        self.samples.clear()
        self._latest = None
        self._total_steps = self._epochs = self._skipped = 0
        self._last_status = ""
        self._logged_training = False
        self._phase, self._ended = "", ""
        self._phase_times = PhaseTimes()
        self.progress.setToolTip("")
        self.run_dir = None
        self.last_result = None

    # ---------------------------------------------------------------- events (GUI thread)
    @Slot(object)
    def _on_worker_event(self, event: object) -> None:
        # Called once per engine event, maybe thousands a second: only store and append
        # here; widgets are updated from the timer.
        if isinstance(event, StepMetrics):
            self.plots.add_step(event)
            self._latest = event
            self._progress_dirty = True
        elif isinstance(event, StepSkipped):
            self._skipped = event.skipped_total  # the engine's status line says it in the log
            self._progress_dirty = True
        elif isinstance(event, Status):
            self._on_status(event)
        elif isinstance(event, PhaseProgress):
            self._enter_phase(event.phase)
            self.progress.setRange(0, max(1, event.total))
            self.progress.setValue(event.done)
            name = PHASE_NAMES.get(event.phase, event.phase).lower()
            self.progress.setFormat(f"{name} {event.done}/{event.total}")
        elif isinstance(event, EpochMetrics):
            self.plots.add_epoch(event)
            self._append_log(f"epoch {event.epoch}/{self._epochs} done at step {event.step}: "
                             f"mean loss {event.mean_loss:.4f}")
        elif isinstance(event, ValidationMetrics):
            self.plots.add_validation(event)
            self._append_log(f"validation loss at step {event.step}: {event.loss:.4f} on {event.images} held-out "
                             f"images (best {event.best:.4f})")
        elif isinstance(event, CheckpointSaved):
            state = " (with training state)" if event.state_path else ""
            self._append_log(f"saved {event.kind} checkpoint at step {event.step}{state}: {event.path}")
        elif isinstance(event, SampleImage):
            self.samples.add_sample(event)
            self._append_log(f"sample at step {event.step}: {event.prompt}")
        elif isinstance(event, RunStarted):
            self._total_steps, self._epochs, self.run_dir = event.total_steps, event.epochs, event.run_dir
            self.run_started.emit(event.run_dir)
            self._append_log(f"run folder {event.run_dir}: {count(event.total_steps, 'step')}, "
                             f"{count(event.epochs, 'epoch')}, {count(event.batches_per_epoch, 'batch', 'batches')} "
                             "per epoch")
        # Finished and Failed also arrive here; they are handled once, from ``finished``.

    def _on_status(self, status: Status) -> None:
        # "training" follows every save and sample: worth a log line only the first time.
        repeat = status.text == self._last_status or (status.text == "training" and self._logged_training)
        if not repeat:
            self._append_log(status.text)
        self._logged_training |= status.text == "training"
        self._last_status = status.text
        self._enter_phase(status.phase)
        if self.state == STOPPING:
            return  # keep saying that it is stopping
        if status.phase == "paused" or self.state != PAUSED:
            name = PHASE_NAMES.get(status.phase, status.phase.capitalize())
            text = status.text if status.text.lower().startswith(status.phase[:4]) else f"{name}: {status.text}"
            self.status_label.setText(text[:1].upper() + text[1:])
        if status.phase == "loading" and self._latest is None:
            self.progress.setRange(0, 0)
            self.progress.setFormat("loading…")
        elif self._latest is None and status.phase in ("training", "sampling", "saving"):
            # No step yet: the bar still shows the caching count; say what happens now.
            self.progress.setRange(0, 0)
            self.progress.setFormat(f"{PHASE_NAMES.get(status.phase, status.phase).lower()}: before the first step…")
        elif status.phase in ("training", "sampling", "saving", "paused"):
            self._progress_dirty = True

    def _enter_phase(self, phase: str) -> None:
        if phase and phase != self._phase:
            self._phase = phase
            self._phase_times.enter(phase)
            self._progress_dirty = True

    @Slot(object)
    def _on_worker_finished(self, result: Finished | Failed) -> None:
        self.last_result = result
        self._phase_times.enter("")  # the last phase ends here
        self._ended = "failed" if isinstance(result, Failed) else result.reason.replace("_", " ")
        self.plots.redraw_now()
        self._update_progress()
        if isinstance(result, Failed):
            self.status_label.setText(f"Failed: {result.summary}")
            self._append_log(f"FAILED: {result.summary}")
            for line in result.advice:
                self._append_log(f"  - {line}")
            if result.log_path:
                self._append_log(f"  log: {result.log_path}")
        else:
            took = format_duration(result.wall_seconds)
            saved = f": {result.lora_path}" if result.lora_path else " (nothing saved)"
            reason = result.reason.replace("_", " ")
            self.status_label.setText(f"{reason.capitalize()} after {count(result.steps, 'step')}")
            self._append_log(f"{reason} after {count(result.steps, 'step')} in {took}{saved}")
        apart = self._phase_times.outside_training()
        if apart:
            self._append_log(f"time per step counts training only; apart from it: {apart}")
        self._set_state(IDLE)
        self.running_changed.emit(False)
        if isinstance(result, Failed) and not self.queue_panel.running:
            self.show_error(result)  # a queued run's failure is logged; the queue goes on and sums up at its end
        self.run_finished.emit(result)

    def _on_redraw_timer_timeout(self) -> None:
        self.plots.tick()
        if self._progress_dirty:
            self._update_progress()

    def _update_progress(self) -> None:
        self._progress_dirty = False
        metrics = self._latest
        if metrics is None:
            return
        total = metrics.total_steps or self._total_steps
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(metrics.step)
        ended = self._ended or ("stopping" if self.state == STOPPING else "")
        self.progress.setFormat(progress_text(metrics, self._epochs, self._skipped, self._phase, ended))
        apart = self._phase_times.outside_training()
        self.progress.setToolTip("Time per step counts training only" + (f"; apart from it: {apart}" if apart else ""))

    def _append_log(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    def append_log(self, text: str) -> None:
        """A line in the run log (the queue reports there)."""
        self._append_log(text)

    # ---------------------------------------------------------------- buttons
    def _on_start_button_clicked(self) -> None:
        self.start_after_vram_check()

    # ---------------------------------------------------------------- the check before Start
    def start_after_vram_check(self) -> None:
        """Start, unless the VRAM forecast of these settings exceeds the card: then ask first
        (gui.vram_dialog). Only the Start button asks; queued and resumed runs start as given."""
        if self.is_running() or self._blocked or self.queue_panel.running or self.vram_dialog is not None:
            return
        inputs = self.vram.refresh_now(self.project.config)
        state = self.vram.state_for(inputs.key)
        if state is not None and (state.error or state.fits):
            self._start_checked(START, state)
            return
        dialog = VramStartDialog(self.vram, inputs, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.decided.connect(self._on_vram_dialog_decided)
        self.vram_dialog = dialog
        dialog.open()
        dialog.refresh()

    def _on_vram_dialog_decided(self, decision: object) -> None:
        dialog, self.vram_dialog = self.vram_dialog, None
        if decision == CANCEL or dialog is None:
            return  # nothing changes
        self._start_checked(decision, self.vram.state_for(dialog.inputs.key))

    def _start_checked(self, decision: object, state: VramState | None) -> None:
        if isinstance(decision, Suggestion):
            # Applied as if the person had edited the fields, then started: they asked to train,
            # and the change they chose is the one the dialog showed to fit.
            try:
                for change in decision.changes:
                    self.project.set_value(change.path, change.value)
            except FieldError as error:
                self.show_message("Cannot apply the change", f"{error}\nNothing was started.")
                return
            self._append_log(f"VRAM: applied “{decision.label}” (≈ {gib(decision.forecast.driver)} of your "
                             f"{state.card.size_label if state else 'card'})")
        elif state is None:
            self._append_log("VRAM forecast not ready: started without it")
        elif state.error:
            self._append_log(f"VRAM forecast unavailable ({state.error}): started without it")
        elif state.fits is False:
            self._append_log(f"VRAM: started anyway at ≈ {gib(state.forecast.driver)} of your {state.card.size_label}")
        self.start()

    def _on_resume_run_button_clicked(self) -> None:
        run_dir = self.resumable_run()
        if run_dir is not None:
            self.resume_run(run_dir)

    def _on_pause_button_clicked(self) -> None:
        if self.state == PAUSED:
            self.resume()
        else:
            self.pause()

    def _on_stop_button_clicked(self) -> None:
        self.stop()

    def _on_cancel_button_clicked(self) -> None:
        self.cancel()

    def _on_save_button_clicked(self) -> None:
        self.save_now()

    def _on_sample_button_clicked(self) -> None:
        self.sample_now()

    def _on_queue_button_clicked(self) -> None:
        self.queue_panel.add_project(self.project)

    def _on_sweep_button_clicked(self) -> None:
        self.queue_panel.open_sweep_dialog(self.project)


def progress_text(metrics: StepMetrics, epochs: int, skipped: int = 0, phase: str = "training",
                  ended: str = "") -> str:
    """"step 120/1600 · epoch 2/10 · 1.85 it/s · ETA 12:34", with "· 3 skipped" when steps
    were left out for a non-finite loss (training.nonfinite_loss = "skip"). A phase other
    than training leads ("Sampling · step …"), and a run that ended or is stopping says so
    in place of its ETA, which no longer means anything."""
    epoch = f"epoch {metrics.epoch}/{epochs}" if epochs else f"epoch {metrics.epoch}"
    skips = f" · {skipped} skipped" if skipped else ""
    lead = f"{PHASE_NAMES.get(phase, phase.capitalize())} · " if phase and phase != "training" and not ended else ""
    tail = ended if ended else f"ETA {format_duration(metrics.eta_s)}"
    return f"{lead}step {metrics.step}/{metrics.total_steps} · {epoch}{skips} · {format_rate(metrics.it_per_s)} · {tail}"
