"""The training queue in the Training tab: the queued configurations with their status, the
buttons that reorder and prune them, and the runner that trains them one after another through
the tab's own worker — a fresh Trainer per item, the live plots following the current one.

Stopping or cancelling a queued run ends the queue there (the rest stays pending); a failed
run is logged and the queue goes on with the next item. When the last run of a sweep ends,
``sweep_finished`` names its run folders so the window can compare exactly those."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from core.studies.queue_runner import QueueRunner
from core.studies.run_queue import PENDING, RUNNING, QueueError, RunQueue
from core.training.events import Failed, Finished
from core.system.words import count
from gui import theme

ID_ROLE = Qt.ItemDataRole.UserRole
COLUMNS = ["#", "label", "status", "run folder / message"]
STATUS_COLOURS = {"running": theme.ACCENT, "completed": theme.OK, "failed": theme.ERROR,
                  "stopped": theme.WARNING, "cancelled": theme.WARNING, "interrupted": theme.WARNING}
RUN_TIP = "Train every pending item, one after another"
FINISH_TIP = "Let the current run finish, then stop the queue (Stop ends the current run now)"


class QueuePanel(QWidget):
    item_started = Signal(object)  # the QueueItem now training
    queue_finished = Signal()
    sweep_finished = Signal(str, list)  # sweep id, the run folders of its items in sweep order

    def __init__(self, queue: RunQueue, runner: Any, parent: QWidget | None = None) -> None:
        """``runner`` is the Training tab: ``start_queued``, ``is_running``, ``append_log``,
        ``show_message`` and the ``run_started`` and ``run_finished`` signals."""
        super().__init__(parent)
        self.queue = queue
        self._runner = runner
        self._pass: QueueRunner | None = None  # the queue's pass while it trains its items
        self._finish_after_current = False
        runner.run_finished.connect(self._on_runner_run_finished)
        runner.run_started.connect(self._on_runner_run_started)
        self._build()
        self.refresh()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.title = QLabel("Queue")
        self.title.setStyleSheet("font-weight: bold")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)  # one line per item; the tooltip has the whole text
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.up_button = _button("Move up", "Train this item earlier", self._on_up_button_clicked)
        self.down_button = _button("Move down", "Train this item later", self._on_down_button_clicked)
        self.remove_button = _button("Remove", "Take this item off the queue", self._on_remove_button_clicked)
        self.clear_button = _button("Clear finished", "Remove every item that has ended (their runs stay on disk)",
                                    self._on_clear_button_clicked)
        self.run_button = _button("Run queue", RUN_TIP, self._on_run_button_clicked)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        for button in (self.up_button, self.down_button, self.remove_button, self.clear_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.run_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)

    # ---------------------------------------------------------------- the list
    @property
    def running(self) -> bool:
        """True while the queue is training its items."""
        return self._pass is not None

    def refresh(self) -> None:
        """Show the queue as saved (another process may have changed it)."""
        keep = self.selected_id()
        self.queue.reload()
        items = self.queue.items
        self.table.setRowCount(len(items))
        for row, item in enumerate(items):
            folder = Path(item.run_dir).name if item.run_dir else ""
            detail = " — ".join(part for part in (item.message, folder) if part)
            tip = "\n".join(part for part in (item.label, item.message, item.run_dir) if part)
            cells = [str(row + 1), item.label, item.status, detail]
            for column, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setData(ID_ROLE, item.id)
                cell.setToolTip(tip)
                if column == 2 and item.status in STATUS_COLOURS:
                    cell.setForeground(QBrush(QColor(STATUS_COLOURS[item.status])))
                self.table.setItem(row, column, cell)
        running = next((row for row, item in enumerate(items) if item.status == RUNNING), None)
        if running is not None:
            self.table.scrollToItem(self.table.item(running, 0))
        pending = sum(1 for item in items if item.status == PENDING)
        self.title.setText(f"Queue — {count(len(items), 'item')}, {pending} pending" if items else
                           "Queue — empty (“Add to queue” or “Sweep…” above)")
        if keep:
            self.select(keep)
        self._update_buttons()

    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.data(ID_ROLE) if item is not None else None

    def select(self, item_id: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(ID_ROLE) == item_id:
                self.table.selectRow(row)
                return

    def move_selected(self, offset: int) -> None:
        item_id = self.selected_id()
        if item_id is None:
            return
        self._change(lambda: self.queue.move(item_id, self.queue.index_of(item_id) + offset))
        self.select(item_id)

    def remove_selected(self) -> None:
        item_id = self.selected_id()
        if item_id is not None:
            self._change(lambda: self.queue.remove(item_id))

    def clear_finished(self) -> None:
        self._change(self.queue.clear_finished)

    def add_project(self, project: Any, label: str | None = None) -> Any | None:
        """Queue a snapshot of the project's settings under a label (asked when not given);
        the queued item, or None when the person cancelled or saving failed."""
        if label is None:
            label = self.ask_label(project.config.output.output_name or project.name)
            if label is None:
                return None
        try:
            item = self.queue.add(project.snapshot(), label.strip(), project.description)
        except OSError as error:
            self._runner.show_message("Cannot save the queue", f"{self.queue.path}: {error.strerror or error}\n"
                                                               "Nothing was queued.")
            return None
        self._runner.append_log(f"queued “{item.label}” ({len(self.queue.items)} in the queue)")
        self.refresh()
        return item

    def open_sweep_dialog(self, project: Any) -> Any:
        from gui.sweep_dialog import SweepDialog

        dialog = SweepDialog(project, self.queue, self.window())
        dialog.sweep_queued.connect(self._on_sweep_dialog_sweep_queued)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _on_sweep_dialog_sweep_queued(self, sweep_id: str, start_now: bool) -> None:
        items = self.queue.sweep_items(sweep_id)
        self._runner.append_log(f"queued a sweep of {count(len(items), 'run')}: " + ", ".join(i.label for i in items))
        self.refresh()
        if start_now and not self.running and not self._runner.is_running():
            self.run()

    def ask_label(self, default: str) -> str | None:
        """Asks the person (tests replace this on the instance)."""
        from PySide6.QtWidgets import QInputDialog

        text, ok = QInputDialog.getText(self, "Add to queue", "A label for this run in the queue:", text=default)
        return text if ok else None

    def _change(self, action: Any) -> None:
        try:
            action()
        except QueueError as error:
            self._runner.show_message("Queue", str(error))
        except OSError as error:
            self._runner.show_message("Cannot save the queue", f"{self.queue.path}: {error.strerror or error}\n"
                                                               "The change was not saved.")
        self.refresh()

    # ---------------------------------------------------------------- running
    # The rules (what is taken next, what cannot start, what is recorded, when the queue ends)
    # are core's QueueRunner, the same that `lorakiln queue run` follows; this panel only
    # starts each run in the tab's worker and hands the runner what the run reported.
    def run(self) -> bool:
        """Train the pending items one after another; False (with a message) when it cannot start."""
        if self.running:
            return False
        message = None
        if self._runner.is_running():
            message = "A run is training; start the queue when it has ended."
        elif self.queue.busy_elsewhere():
            message = (f"Another LoRA Kiln process is running this queue ({self.queue.path}); wait for it to "
                       "finish or stop it there.")
        elif self.queue.next_pending() is None:
            message = "Nothing is waiting in the queue: add the project with “Add to queue” or a “Sweep…”."
        if message:
            self._runner.show_message("Cannot run the queue", message)
            return False
        self._pass = QueueRunner(self.queue, report=self._log)
        self._runner.append_log("queue: starting")
        self._start_next()
        return self.running

    def finish_after_current(self) -> None:
        """End the queue once the current run has ended normally."""
        if self.running:
            self._pass.finish_after_current()
            self._finish_after_current = True
            self._runner.append_log("queue: it ends after the current run")
            self._update_buttons()

    def _log(self, line: str) -> None:
        self._runner.append_log(f"queue: {line}")

    def _start_next(self) -> None:
        queue_pass = self._pass
        if queue_pass is None:
            return
        try:
            queued = queue_pass.next_run()
        except (QueueError, OSError) as error:  # nothing ran: the person pressed Run queue and deserves to know why
            self._log(f"cannot take the next item from {self.queue.path}: {error}")
            self._runner.show_message("Cannot run the queue", str(error))
            queued = None
        if queued is None:
            self._end()
            return
        item = queued.item
        if not self._runner.start_queued(queued.config, item.description, item.label):
            queue_pass.run_not_started()
            self._end()
            return
        self.refresh()
        self.item_started.emit(item)
        self._update_buttons()

    def _on_runner_run_started(self, run_dir: str) -> None:
        if self._pass is not None and self._pass.current is not None:
            self._pass.run_started(run_dir)
            self.refresh()

    def _on_runner_run_finished(self, result: Finished | Failed) -> None:
        queue_pass = self._pass
        if queue_pass is None or queue_pass.current is None:
            return  # a run started from Start, not from the queue
        outcome = queue_pass.run_ended(result)
        self.refresh()
        if outcome.sweep_id:
            self._announce_sweep_if_done(outcome.sweep_id)
        QTimer.singleShot(0, self._start_next)  # after the other listeners have seen this run end

    def _announce_sweep_if_done(self, sweep_id: str) -> None:
        items = self.queue.sweep_items(sweep_id)
        if items and not any(item.status in (PENDING, RUNNING) for item in items):
            run_dirs = [item.run_dir for item in items if item.run_dir]
            if run_dirs:
                self.sweep_finished.emit(sweep_id, run_dirs)

    def _end(self) -> None:
        queue_pass, self._pass = self._pass, None
        self._finish_after_current = False
        if queue_pass is None:
            return
        pending = sum(1 for item in self.queue.items if item.status == PENDING)
        done = len(queue_pass.outcomes)
        left = f"; {count(pending, 'item')} still pending" if pending else ""
        self._runner.append_log(f"queue: ended ({queue_pass.ended_because}): {count(done, 'item')} ran{left}")
        failed = [f"{o.label}: failed: {o.message}" for o in queue_pass.outcomes if o.status == "failed"]
        self.refresh()
        self.queue_finished.emit()
        if failed:
            self._runner.show_message("Queued runs failed", f"{len(failed)} of {done} queued runs failed:\n\n"
                                      + "\n".join(failed) + "\n\nThe Training tab's log has the details.")

    # ---------------------------------------------------------------- buttons
    def _update_buttons(self) -> None:
        selected = self.selected_id()
        row = self.table.currentRow() if selected else -1
        status = self.table.item(row, 2).text() if selected and row >= 0 and self.table.item(row, 2) else ""
        self.up_button.setEnabled(bool(selected) and row > 0)
        self.down_button.setEnabled(bool(selected) and 0 <= row < self.table.rowCount() - 1)
        self.remove_button.setEnabled(bool(selected) and status != RUNNING)
        self.clear_button.setEnabled(any(item.status not in (PENDING, RUNNING) for item in self.queue.items))
        if self.running:
            self.run_button.setText("Finish after this run")
            self.run_button.setToolTip(FINISH_TIP)
            self.run_button.setEnabled(not self._finish_after_current)
        else:
            self.run_button.setText("Run queue")
            self.run_button.setToolTip(RUN_TIP)
            self.run_button.setEnabled(any(item.status == PENDING for item in self.queue.items))

    def _on_up_button_clicked(self) -> None:
        self.move_selected(-1)

    def _on_down_button_clicked(self) -> None:
        self.move_selected(1)

    def _on_remove_button_clicked(self) -> None:
        self.remove_selected()

    def _on_clear_button_clicked(self) -> None:
        self.clear_finished()

    def _on_run_button_clicked(self) -> None:
        if self.running:
            self.finish_after_current()
        else:
            self.run()


def _button(text: str, tip: str, slot: Any) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.clicked.connect(slot)
    return button
