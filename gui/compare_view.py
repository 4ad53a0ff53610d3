"""Several runs side by side: their loss, loss per epoch, learning rate, d·lr and memory curves
overlaid (one colour per run, the same colours as the exported charts), a legend naming each run
by the parameter values that set it apart, and the comparison table under the plots. Curves are
read only for the runs shown, in the background, and kept until their metrics file changes."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QBrush, QColor, QResizeEvent
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QFrame, QGridLayout, QHBoxLayout, QHeaderView, QLabel,
                               QScrollArea, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from core.studies.chart import run_colour
from core.training.metrics import smooth
from core.system.words import count
from gui.plots import MEMORY_MIN_SPAN_MB, LivePlot
from gui.run_list import BackgroundCall, report

DEFAULT_SMOOTHING = 0.9
GROUP_DASHES = {"unet": False, "text_encoder": True}  # one colour per run; the group by line style
DLR_NOTE = "d·lr appears with Prodigy and D-Adaptation"
EPOCH_NOTE = "No run shown has a whole epoch yet"
TABLE_ROWS_SHOWN = 6  # rows the comparison table shows before it scrolls
RAW_ALPHA = "55"  # raw loss behind the smoothed curve of the same run: faint, same colour
LR_LINES = "Learning rate: solid line U-Net, dashed text encoder"
# A plot a third of a 1280-pixel window wide holds about this much title and axis text; the
# unit goes into the axis label and what was measured into the title, so neither is cut off.
MEMORY_TITLES = {"cuda": ("VRAM", "MB"), "rss": ("Process memory (RSS)", "MB")}
# Short names for the settings sweeps vary most, for the table's run column.
SHORT_NAMES = {"learning_rate": "lr", "unet_lr": "unet lr", "text_encoder_lr": "te lr",
               "resolution": "res", "batch_size": "batch", "max_train_steps": "steps",
               "max_train_epochs": "epochs", "gradient_accumulation_steps": "accum"}
PLOT_MIN_HEIGHT = 200  # px: title, axis label and a few ticks
TABLE_VALUE_CHARS = 14  # per varied value in the run column; the whole value is on hover


def _metrics_stamp(run_dir: Path) -> tuple[int, int] | None:
    try:
        stat = (Path(run_dir) / "metrics.jsonl").stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def load_many_series(paths: list[Path]) -> dict[str, tuple[object, Any, str | None]]:
    """(stamp, RunSeries or None, problem) per run folder; runs in the background thread."""
    from core.studies.run_index import load_series

    out: dict[str, tuple[object, Any, str | None]] = {}
    for path in paths:
        stamp = _metrics_stamp(path)
        try:
            out[str(path)] = (stamp, load_series(path), None)
        except Exception as error:  # noqa: BLE001 - one unreadable run must not hide the others
            out[str(path)] = (stamp, None, f"{path.name}: cannot read its metrics ({error})")
    return out


class ComparePlot(LivePlot):
    """A plot of the comparison. Its legend is the shared one beside the plots, so the title
    line stays plain: five plots repeating the run names would crowd them out."""

    def _show_title(self) -> None:
        self.plot_item.setTitle(html.escape(self.title))

    def remove_all(self) -> None:
        for name in self.series_names():
            self.remove_series(name)

    def add_curve(self, name: str, colour: str, xs: np.ndarray, ys: np.ndarray, *, width: float = 1.5,
                  dashed: bool = False, symbol: str | None = None) -> None:
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        keep = np.isfinite(xs) & np.isfinite(ys)
        if self.log_y:
            keep &= ys > 0
        buffer = self.add_series(name, colour, width=width, dashed=dashed, symbol=symbol)
        buffer.extend(xs[keep], ys[keep])
        self.mark_dirty(name)


class _FillingScrollArea(QScrollArea):
    """Its widget fills the view and scrolls only below the widget's least height. (A
    resizable QScrollArea sizes a widget with wrapped labels by its preferred height for
    the width, which for the plots is twice a screen's height.)"""

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        widget = self.widget()
        if widget is not None:
            least = widget.minimumSizeHint()
            view = self.contentsRect().size()  # the viewport before any scroll bar takes room
            bar = self.verticalScrollBar().sizeHint().width() if least.height() > view.height() else 0
            widget.resize(max(view.width() - bar, least.width()), max(view.height(), least.height()))


class CompareView(QWidget):
    drawn = Signal()  # the plots and the table show the current selection

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.records: list[Any] = []
        self.labels: list[str] = []
        self.varied: list[str] = []
        self.table_data: Any = None
        self.problems: list[str] = []
        self._cache: dict[str, tuple[object, Any, str | None]] = {}
        self._generation = 0
        self._awaited: int | None = None  # the read whose curves have not been drawn yet
        self._loader = BackgroundCall(self)
        self._loader.done.connect(self._on_loader_done)
        self._loader.failed.connect(self._on_loader_failed)
        self._build()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        self.loss = ComparePlot("Loss per step", "step", "loss")
        self.epoch_loss = ComparePlot("Loss per epoch", "epoch", "mean loss")
        self.lr = ComparePlot("Learning rate", "step", "learning rate")
        self.lr.setToolTip(LR_LINES)
        self.dlr = ComparePlot("Adapted LR d·lr", "step", "d·lr", log_y=True)
        self.memory = ComparePlot("Memory", "step", "MB")
        self.memory.set_min_y_span(MEMORY_MIN_SPAN_MB)
        self.varied_label = QLabel("Select runs to compare them.")
        self.varied_label.setWordWrap(True)
        self.varied_label.setStyleSheet("font-weight: bold")
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.legend.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.legend.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #777")
        self.raw_box = QCheckBox("raw")
        self.raw_box.setToolTip("Show every step's loss (faint when the smoothed curve is shown too)")
        self.smoothed_box = QCheckBox("smoothed")
        self.smoothed_box.setChecked(True)
        self.smoothed_box.setToolTip("Show the loss smoothed like TensorBoard does")
        self.smoothing = QDoubleSpinBox()
        self.smoothing.setRange(0.0, 0.99)
        self.smoothing.setSingleStep(0.05)
        self.smoothing.setValue(DEFAULT_SMOOTHING)
        self.smoothing.setToolTip("Smoothing weight (0 = raw, 0.99 = very smooth)")
        self.validation_box = QCheckBox("validation")
        self.validation_box.setChecked(True)
        self.validation_box.setToolTip("Show each run's validation loss (markers): the loss on held-out images at "
                                       "fixed timesteps and noise, the curve to compare runs by")
        for control in (self.raw_box, self.smoothed_box, self.validation_box):
            control.toggled.connect(self._on_loss_option_changed)
        self.smoothing.valueChanged.connect(self._on_loss_option_changed)

        legend_box = QWidget()
        legend_layout = QVBoxLayout(legend_box)
        legend_layout.addWidget(self.varied_label)
        options = QHBoxLayout()
        options.addWidget(QLabel("Loss:"))
        options.addWidget(self.raw_box)
        options.addWidget(self.smoothed_box)
        options.addWidget(self.smoothing)
        options.addWidget(self.validation_box)
        options.addStretch(1)
        legend_layout.addLayout(options)
        legend_layout.addWidget(self.legend, 1)
        lines = QLabel(LR_LINES)
        lines.setWordWrap(True)
        lines.setStyleSheet("color: #777")
        legend_layout.addWidget(lines)
        legend_layout.addWidget(self.note)

        plots = QWidget()
        grid = QGridLayout(plots)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(6)
        for widget, row, column in ((self.loss, 0, 0), (self.epoch_loss, 0, 1), (legend_box, 0, 2),
                                    (self.lr, 1, 0), (self.dlr, 1, 1), (self.memory, 1, 2)):
            grid.addWidget(widget, row, column)
        for column in range(3):
            grid.setColumnStretch(column, 1)
        # Below this height a plot's title and axis labels no longer fit; on a short screen the
        # plots scroll instead of being squeezed.
        for row in range(2):
            grid.setRowMinimumHeight(row, PLOT_MIN_HEIGHT)
            grid.setRowStretch(row, 1)
        plots_area = _FillingScrollArea()
        plots_area.setFrameShape(QFrame.Shape.NoFrame)
        plots_area.setWidget(plots)

        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setAlternatingRowColors(True)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(plots_area)
        splitter.addWidget(self.table)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter)

    def show_message(self, title: str, text: str) -> None:
        report(self, title, text)

    @property
    def plots(self) -> list[ComparePlot]:
        return [self.loss, self.epoch_loss, self.lr, self.dlr, self.memory]

    # ---------------------------------------------------------------- showing runs
    def show_runs(self, records: list[Any]) -> None:
        """Compare these runs; curves not read yet are read in the background, then drawn."""
        self._generation += 1
        self.records = list(records)
        stale = [Path(r.path) for r in self.records if self._cached(r.path) is None and r.config is not None]
        if stale:
            self.note.setText(f"Reading the curves of {count(len(stale), 'run')}…")
            self._awaited = self._generation
            self._loader.start(self._generation, load_many_series, stale)
        else:
            self._awaited = None
            self._draw()

    def is_loading(self) -> bool:
        return self._awaited is not None

    def _cached(self, path: Path) -> Any | None:
        entry = self._cache.get(str(path))
        if entry is None or entry[0] != _metrics_stamp(Path(path)):
            return None
        return entry

    @Slot(object, object)
    def _on_loader_done(self, generation: object, loaded: object) -> None:
        self._cache.update(loaded)  # type: ignore[arg-type]
        if generation == self._generation:
            self._awaited = None
            self._draw()

    @Slot(object, str)
    def _on_loader_failed(self, generation: object, text: str) -> None:
        if generation == self._generation:
            self._awaited = None
            self.show_message("Cannot read the runs' curves", text)
            self._draw()

    def _draw(self) -> None:
        from core.studies.compare import comparison_table, legend_labels, varied_params

        records = self.records
        self.varied = varied_params(records)
        self.labels = legend_labels(records, self.varied)  # unique, as the exported charts name them
        self.problems = [f"{r.folder}: {r.problem}" for r in records if r.problem]
        series = []
        for record in records:
            entry = self._cache.get(str(record.path))
            series.append(entry[1] if entry else None)
            if entry and entry[2]:
                self.problems.append(entry[2])
        self._draw_curves(series)
        self._show_legend()
        self.table_data = comparison_table(records) if records else None
        self._show_table()
        self.drawn.emit()

    def _draw_curves(self, series: list[Any]) -> None:
        for plot in self.plots:
            plot.remove_all()
        weight = self.smoothing.value()
        memory_kinds = set()
        for index, (label, run) in enumerate(zip(self.labels, series)):
            if run is None:
                continue
            colour = run_colour(index)
            if self.raw_box.isChecked():
                faint = colour + RAW_ALPHA if self.smoothed_box.isChecked() else colour
                self.loss.add_curve(f"{label} (raw)", faint, run.step, run.loss, width=1)
            if self.smoothed_box.isChecked():
                steps, losses = _finite_pairs(run.step, run.loss)
                self.loss.add_curve(label, colour, steps, np.asarray(smooth(losses.tolist(), weight)),
                                    width=2)
            if self.validation_box.isChecked() and run.validation[0].size:
                self.loss.add_curve(f"{label} (validation)", colour, *run.validation, symbol="o", dashed=True)
            self.epoch_loss.add_curve(label, colour, run.epoch, run.epoch_loss, symbol="o")
            for plot, groups in ((self.lr, run.lr), (self.dlr, run.dlr)):
                for group, (steps, values) in groups.items():
                    plot.add_curve(f"{label} · {group}", colour, steps, values, dashed=GROUP_DASHES.get(group, True))
            steps, values = run.memory
            if len(steps):
                memory_kinds.add(run.memory_kind)
                self.memory.add_curve(label, colour, steps, values)
        kind = next(iter(memory_kinds)) if len(memory_kinds) == 1 else None
        title, axis = MEMORY_TITLES.get(kind, ("Memory", "MB"))
        self.memory.set_title(title)
        self.memory.set_axis_labels("step", axis)
        for plot in self.plots:
            plot.refresh()
            plot.plot_item.enableAutoRange()
        self.dlr.show_note("" if self.dlr.series_names() else DLR_NOTE)
        shown = [run for run in series if run is not None]
        # The switch only where a run shown has a validation loss to draw.
        self.validation_box.setVisible(any(run.validation[0].size for run in shown))
        self.epoch_loss.show_note(EPOCH_NOTE if shown and not any(len(run.epoch) for run in shown) else "")

    def _show_legend(self) -> None:
        if not self.records:
            self.varied_label.setText("Select runs to compare them.")
        elif len(self.records) == 1:
            self.varied_label.setText("One run selected: select more (Ctrl/Shift+click) to compare.")
        elif self.varied:
            self.varied_label.setText("Differs: " + ", ".join(self.varied))
        else:
            self.varied_label.setText("No setting differs between these runs.")
        lines = []
        for index, (label, record) in enumerate(zip(self.labels, self.records)):
            lines.append(f"<span style='color:{run_colour(index)}; font-size:14pt'>━</span>&nbsp;"
                         f"<b>{html.escape(label)}</b> <span style='color:#777'>{html.escape(record.folder)}"
                         f"</span>")
        self.legend.setText("<br>".join(lines))
        self.note.setText("\n".join(self.problems))

    def _show_table(self) -> None:
        from core.studies.compare import format_cell

        table = self.table
        data = self.table_data
        table.clear()
        if data is None:
            table.setRowCount(0)
            table.setColumnCount(0)
            return
        table.setColumnCount(len(data.columns))
        table.setHorizontalHeaderLabels(list(data.columns))
        table.setRowCount(len(data.rows))
        table_labels = short_labels(self.records, data.varied, [row[0] for row in data.rows])
        for row, values in enumerate(data.rows):
            for column, value in enumerate(values):
                item = QTableWidgetItem(format_cell(data.columns[column], value))
                if column == 0 and row < len(self.records):
                    item.setText(table_labels[row])
                    item.setToolTip(difference_tip(self.records[row], data.varied))
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(row, column, item)
            table.item(row, 0).setForeground(QBrush(QColor(run_colour(row))))
        # Tall enough for every row (up to a few): the table is what the comparison is read from.
        shown = min(len(data.rows), TABLE_ROWS_SHOWN)
        table.setMinimumHeight(table.horizontalHeader().height() + shown * table.verticalHeader().defaultSectionSize()
                               + 2 * table.frameWidth() + table.horizontalScrollBar().sizeHint().height())

    def _on_loss_option_changed(self) -> None:
        if self.records and not self.is_loading():
            self._draw()

    # ---------------------------------------------------------------- export
    def export_to(self, folder: str | Path) -> list[Path] | None:
        """Write the comparison (CSV, Markdown, PNG charts) into ``folder``; None (and a
        message) when that fails."""
        from core.studies.compare import export_comparison

        if not self.records:
            self.show_message("Nothing to export", "Select the runs to compare first.")
            return None
        try:
            return export_comparison(self.records, Path(folder))
        except OSError as error:
            self.show_message("Export failed", f"Could not write the comparison into {folder}:\n"
                                               f"{error.strerror or error}\nChoose another folder.")
        except ValueError as error:
            self.show_message("Export failed", str(error))
        return None


def _finite_pairs(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]




def short_label(record: Any, varied: list[str]) -> str:
    """The run column's text: only the values that set the run apart, under short names
    ("lr=0.0002, dim=16"), each cut to a few characters; the folder when nothing differs."""
    from core.studies.compare import IGNORED, format_param, param_value, short_names

    if not varied or record.config is None:
        return record.folder
    names = short_names(varied)
    parts = []
    for key in varied:
        value = param_value(record, key)
        if value is IGNORED:
            continue
        if key.endswith("resolution") and isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
            text = str(value[0])
        else:
            text = format_param(key, value)
        if len(text) > TABLE_VALUE_CHARS:
            text = text[:TABLE_VALUE_CHARS - 1] + "…"
        parts.append(f"{SHORT_NAMES.get(names[key], names[key])}={text}")
    return ", ".join(parts) or record.folder


def short_labels(records: list[Any], varied: list[str], unique: list[str]) -> list[str]:
    """Short labels where they tell the runs apart; the unique legend labels otherwise."""
    labels = [short_label(r, varied) for r in records]
    return labels if len(set(labels)) == len(labels) else unique


def difference_tip(record: Any, varied: list[str]) -> str:
    """Everything that sets the run apart, in full, with its folder: the run cell's tooltip."""
    from core.studies.compare import format_param, param_value

    lines = [f"{key} = {format_param(key, param_value(record, key))}" for key in varied] if record.config else []
    return "\n".join([*lines, str(record.path)])
