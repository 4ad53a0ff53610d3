"""The Runs tab's table of run folders: one row per run found in the watched folders, with the
headline numbers from its summary, sortable, several selectable. Finding and reading the runs
happens off the GUI thread (``BackgroundCall``), so a folder of a thousand runs never freezes
the window; a broken run is listed with what is wrong with it."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QItemSelection, QItemSelectionModel, QObject, Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QMessageBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from core.training.metrics import format_duration
from gui import theme

log = logging.getLogger("lorakiln.gui")

COLUMNS = ["name", "date", "status", "steps", "epochs", "wall time", "training peak", "peak memory",
           "VRAM forecast", "final loss", "last-epoch loss", "problem"]
FORECAST_COLUMN, PROBLEM_COLUMN = COLUMNS.index("VRAM forecast"), COLUMNS.index("problem")
PATH_ROLE = Qt.ItemDataRole.UserRole
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_COLOURS = {"failed": theme.ERROR, "cancelled": theme.WARNING, "incomplete": theme.WARNING,
                  "interrupted": theme.WARNING,
                  "running": theme.ACCENT, "completed": theme.OK}


def report(widget: QWidget, title: str, text: str) -> None:
    """Tell the person: through the window's replaceable ``show_message`` hook when the widget
    sits in a window that has one (tests replace it), else in a message box. A plain method,
    not a lambda stored on the widget: that would tie the widget into a reference cycle, and
    Qt objects freed by the cycle collector may be freed in a training thread."""
    window = widget.window()
    hook = getattr(window, "show_message", None) if window is not widget else None
    if hook is not None:
        hook(title, text)
    else:
        QMessageBox.warning(widget, title, text)


class BackgroundCall(QObject):
    """Runs one function at a time in a plain Python thread and reports its result (or the
    error text) back through queued signals, the same way ``TrainingWorker`` does: the object
    stays in the GUI thread, the thread only emits. ``token`` tells answers apart, so the
    caller can ignore the answer to a question it no longer asks."""

    done = Signal(object, object)  # token, result
    failed = Signal(object, str)  # token, error text (with traceback)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._threads: list[threading.Thread] = []

    def start(self, token: object, function: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=self._main, args=(token, function, args), daemon=True,
                                  name="lorakiln-background")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def busy(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout_s: float) -> bool:
        """Block until every started call has returned (for shutting down and tests)."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not self.busy()

    def _main(self, token: object, function: Callable[..., Any], args: tuple) -> None:
        try:
            result = function(*args)
        except Exception as error:  # noqa: BLE001 - the person sees it, the thread must not die silently
            log.exception("background call failed")
            text = f"{error}\n\n" + "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self._emit(self.failed, token, text)
            return
        self._emit(self.done, token, result)

    @staticmethod
    def _emit(signal: Any, token: object, value: object) -> None:
        try:
            signal.emit(token, value)
        except RuntimeError:  # the receiving widget was closed while the call ran
            pass


class _SortableItem(QTableWidgetItem):
    """Sorts by the value stored under SORT_ROLE (numbers, timestamps), not by its text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:  # noqa: D105
        mine, theirs = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if mine is None or theirs is None:  # empty cells sort first, then by text
            return (mine is not None, self.text()) < (theirs is not None, other.text())
        try:
            return mine < theirs
        except TypeError:
            return str(mine) < str(theirs)


def _number(value: float | None, digits: int = 4) -> tuple[str, float | None]:
    if value is None:
        return "–", None
    return f"{value:.{digits}f}", float(value)


def row_cells(record: Any) -> list[tuple[str, object]]:
    """(text, sort key) for every column of one run."""
    when = record.started_at
    date = time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) if when else "–"
    steps = f"{record.steps}/{record.total_steps}" if record.total_steps else str(record.steps or "–")
    epochs = f"{record.epochs}/{record.total_epochs}" if record.total_epochs else str(record.epochs or "–")
    memory_name = "VRAM" if record.memory_kind == "cuda" else "RAM"
    memory = (f"{record.peak_memory_mb:.0f} MB {memory_name}", record.peak_memory_mb) if record.peak_memory_mb \
        else ("–", None)
    # The training phase's peak (VRAM allocated / reserved on a GPU); "peak memory" is the
    # run's peak over every phase, caching and sampling included.
    training = getattr(record, "training_peak_mb", None)
    reserved = getattr(record, "training_peak_reserved_mb", None) if record.memory_kind == "cuda" else None
    training_cell = ((f"{training:.0f} MB {memory_name}" + (f" (reserved {reserved:.0f})" if reserved else ""),
                      training) if training else ("–", None))
    problem = record.problem or (f"failed: {record.error}" if record.error else "")
    wall = (format_duration(record.wall_seconds), record.wall_seconds) if record.wall_seconds else ("–", None)
    return [(record.name, record.name.lower()), (date, when), (record.status, record.status),
            (steps, record.steps), (epochs, record.epochs), wall, training_cell, memory, forecast_cell(record),
            _number(record.final_loss), _number(record.last_epoch_loss), (problem, problem)]


def forecast_cell(record: Any) -> tuple[str, object]:
    """The VRAM forecast the run recorded when it started, and measured / forecast beside it."""
    from core.studies.run_index import forecast_ratio

    forecast = getattr(record, "forecast_mb", None)
    if forecast:
        ratio = forecast_ratio(record)
        return f"{forecast:.0f} MB" + (f" (measured {ratio:.2f}×)" if ratio is not None else ""), forecast
    if getattr(record, "forecast_error", None):
        return "could not be made", None
    # A CPU run forecasts nothing: its measured peak is the process's RAM, not a GPU's memory.
    return ("– (CPU run)", None) if record.memory_kind == "rss" else ("–", None)


def forecast_tip(record: Any) -> str:
    if getattr(record, "forecast_error", None):
        return f"The VRAM forecast could not be made when this run started:\n{record.forecast_error}"
    if getattr(record, "forecast_mb", None):
        driver = getattr(record, "forecast_driver_mb", None)
        shown = f"; about {driver:.0f} MB as the driver (nvidia-smi) shows it" if driver else ""
        return (f"Forecast when the run started: {record.forecast_mb:.0f} MB of tensors at the peak{shown}. "
                "Measured / forecast compares it with the run's measured peak (VRAM allocated).")
    if record.memory_kind == "rss":
        return "A CPU run: its peak is the process's RAM, and no GPU forecast is made for it."
    return "This run recorded no VRAM forecast (it ran before LoRA Kiln made them)."


class RunList(QWidget):
    """The table; ``refresh`` re-reads the folders in the background and keeps the selection."""

    selection_changed = Signal(list)  # the selected RunRecords, in table order
    loaded = Signal()  # a refresh finished and the table shows its result
    load_failed = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.folders: list[Path] = []
        self._records: dict[str, Any] = {}
        self._generation = 0
        self._awaited: int | None = None  # the refresh whose answer the table has not shown yet
        self._pending_selection: list[str] | None = None
        self._loader = BackgroundCall(self)
        self._loader.done.connect(self._on_loader_done)
        self._loader.failed.connect(self._on_loader_failed)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setSortingEnabled(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._on_table_selection_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)

    # ---------------------------------------------------------------- loading
    def set_folders(self, folders: list[Path]) -> None:
        self.folders = list(dict.fromkeys(Path(f) for f in folders))

    def refresh(self) -> None:
        """Find and read every run again, in the background; ``loaded`` follows."""
        from core.studies.run_index import discover_runs

        self._generation += 1
        self._awaited = self._generation
        if self._pending_selection is None:
            self._pending_selection = self.selected_paths()
        self._loader.start(self._generation, discover_runs, list(self.folders))

    def is_loading(self) -> bool:
        """True from ``refresh`` until the table shows its answer (the thread may have ended
        before its queued answer arrives)."""
        return self._awaited is not None

    def wait(self, timeout_s: float) -> bool:
        return self._loader.wait(timeout_s)

    @Slot(object, object)
    def _on_loader_done(self, generation: object, records: object) -> None:
        if generation != self._generation:
            return  # an older refresh finished after a newer one started
        self._awaited = None
        self._show(list(records))  # type: ignore[arg-type]
        self.loaded.emit()

    @Slot(object, str)
    def _on_loader_failed(self, generation: object, text: str) -> None:
        if generation == self._generation:
            self._awaited = None
            self._pending_selection = None
            self.load_failed.emit(text)

    def _show(self, records: list[Any]) -> None:
        keep = self._pending_selection or []
        self._pending_selection = None
        self._records = {str(r.path): r for r in records}
        table = self.table
        table.blockSignals(True)
        table.setSortingEnabled(False)
        table.clearContents()
        table.setRowCount(len(records))
        for row, record in enumerate(records):
            for column, (text, key) in enumerate(row_cells(record)):
                item = _SortableItem(text)
                item.setData(SORT_ROLE, key)
                item.setData(PATH_ROLE, str(record.path))
                if column == 2 and record.status in STATUS_COLOURS:
                    item.setForeground(QBrush(QColor(STATUS_COLOURS[record.status])))
                if record.problem or record.error:
                    item.setToolTip(f"{record.path}\n{record.problem or record.error}")
                    if column in (2, PROBLEM_COLUMN):
                        item.setForeground(QBrush(QColor(theme.ERROR)))
                else:
                    item.setToolTip(str(record.path))
                if column == FORECAST_COLUMN:
                    item.setToolTip(forecast_tip(record))
                table.setItem(row, column, item)
        table.setSortingEnabled(True)
        table.blockSignals(False)
        self._select(keep)  # announces the selection, even when it is empty now

    # ---------------------------------------------------------------- selection
    def records(self) -> list[Any]:
        """Every listed run, in table order."""
        return [self._records[p] for p in self._row_paths(range(self.table.rowCount()))]

    def record(self, path: str | Path) -> Any | None:
        return self._records.get(str(path))

    def selected_records(self) -> list[Any]:
        return [self._records[p] for p in self.selected_paths() if p in self._records]

    def selected_paths(self) -> list[str]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return self._row_paths(rows)

    def select_paths(self, paths: list[str | Path]) -> None:
        """Select exactly these runs; when a refresh is under way, once it has finished."""
        wanted = [str(Path(p)) for p in paths]
        if self.is_loading():
            self._pending_selection = wanted
        else:
            self._select(wanted)

    def _select(self, paths: list[str]) -> None:
        table = self.table
        wanted = set(paths)
        table.blockSignals(True)
        table.clearSelection()
        model = table.selectionModel()
        selection = QItemSelection()
        first = None
        for row in range(table.rowCount()):
            if table.item(row, 0).data(PATH_ROLE) in wanted:
                selection.select(table.model().index(row, 0), table.model().index(row, table.columnCount() - 1))
                first = row if first is None else first
        model.select(selection, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        table.blockSignals(False)
        if first is not None:
            table.scrollToItem(table.item(first, 0))
        self._on_table_selection_changed()

    def _row_paths(self, rows: Any) -> list[str]:
        out = []
        for row in rows:
            item = self.table.item(row, 0)
            if item is not None:
                out.append(item.data(PATH_ROLE))
        return out

    def _on_table_selection_changed(self) -> None:
        self.selection_changed.emit(self.selected_records())
