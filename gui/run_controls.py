"""The Training tab's command row: Start, Pause/Resume, Stop, Cancel, Save now, Sample now,
Add to queue and Sweep…, and the phase label, with each button enabled only where its command
means something."""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from gui import theme

IDLE, RUNNING, PAUSED, STOPPING = "idle", "running", "paused", "stopping"
READY, NOT_READY = "Ready", "Not ready"
START_TIP = "Train a LoRA with the current settings"
SAMPLE_TIP = "Generate the sample prompts after this step"
QUEUE_TIP = "Queue a snapshot of the current settings, to train after what is queued already"
SWEEP_TIP = "Queue one run per value of a parameter, to compare them in the Runs tab"


class RunControls(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.start_button = _button("Start", START_TIP)
        self.pause_button = _button("Pause", "Hold training after the current step")
        self.stop_button = _button("Stop", "Finish the current step, save the LoRA and end")
        self.cancel_button = _button("Cancel", "End now without saving")
        self.save_button = _button("Save now", "Save a checkpoint (and training state) after this step")
        self.sample_button = _button("Sample now", SAMPLE_TIP)
        self.resume_run_button = _button("Resume run", "Train the stopped run further from the state it saved")
        self.resume_run_button.hide()  # shown by the Training tab after a run that can go on
        self.queue_button = _button("Add to queue", QUEUE_TIP)
        self.sweep_button = _button("Sweep…", SWEEP_TIP)
        self.status_label = QLabel(READY)
        self.status_label.setStyleSheet("font-weight: bold")
        self.blocked_label = QLabel()
        self.blocked_label.setWordWrap(True)
        self.blocked_label.setStyleSheet(f"color: {theme.ERROR}")
        self.blocked_label.hide()

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for button in (self.start_button, self.pause_button, self.stop_button, self.cancel_button,
                       self.resume_run_button):
            row.addWidget(button)
        separator = QFrame()
        separator.setFrameShape(QFrame.Shape.VLine)
        row.addWidget(separator)
        row.addWidget(self.save_button)
        row.addWidget(self.sample_button)
        separator = QFrame()
        separator.setFrameShape(QFrame.Shape.VLine)
        row.addWidget(separator)
        row.addWidget(self.queue_button)
        row.addWidget(self.sweep_button)
        row.addSpacing(12)
        row.addWidget(self.status_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.blocked_label)

    def show_blocked(self, reasons: list[str]) -> None:
        """Why Start is disabled: the first reason in a label, all of them in the tooltip."""
        if reasons:
            more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
            self.blocked_label.setText(f"Cannot start: {reasons[0]}{more}")
            why = "\n".join(f"• {r}" for r in reasons)
            self.start_button.setToolTip("Cannot start:\n" + why)
            self.queue_button.setToolTip("Cannot queue these settings:\n" + why)
        else:
            self.start_button.setToolTip(START_TIP)
            self.queue_button.setToolTip(QUEUE_TIP)
        self.blocked_label.setVisible(bool(reasons))
        # "Ready" beside "Cannot start: …" contradicts it; an idle label follows the block.
        if self.status_label.text() in (READY, NOT_READY):
            self.status_label.setText(NOT_READY if reasons else READY)

    def show_state(self, state: str, *, blocked: bool, has_prompts: bool, queue_running: bool = False) -> None:
        active = state in (RUNNING, PAUSED)
        self.start_button.setEnabled(state == IDLE and not blocked and not queue_running)
        self.queue_button.setEnabled(not blocked)  # queueing while a run trains is the point of a queue
        self.pause_button.setEnabled(active)
        self.pause_button.setText("Resume" if state == PAUSED else "Pause")
        self.stop_button.setEnabled(active)
        self.cancel_button.setEnabled(active)
        # The engine takes save and sample requests between steps, and at once while paused.
        self.save_button.setEnabled(active)
        self.sample_button.setEnabled(active and has_prompts)
        self.sample_button.setToolTip(SAMPLE_TIP if has_prompts or state == IDLE else "This run has no sample prompts")


def _button(text: str, tip: str) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    return button
