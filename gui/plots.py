"""A live pyqtgraph plot: series backed by growable arrays, redrawn only when asked (the
training tab asks from a throttled timer), with grid, a legend in the title line, a readout of the point under
the mouse, and export of the picture (PNG) and the numbers (CSV)."""

from __future__ import annotations

import csv
import html
import math
import re
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QMessageBox, QToolButton, QVBoxLayout, QWidget

from gui import theme
from gui.dialog_folders import remember_folder, start_path
from gui.series import SeriesBuffer

_configured = False
# The memory plots' least vertical span (MB): a flat 1000-1003 MB line autoscaled to the
# plot's full height would look like a climb, when it is noise.
MEMORY_MIN_SPAN_MB = 512.0


def _configure_once() -> None:
    global _configured
    if not _configured:
        theme.configure_plots()
        _configured = True


class IntegerAxis(pg.AxisItem):
    """Steps and epochs are whole numbers: an axis over 1..3 gets no tick at 1.5."""

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list:  # noqa: N803 - pyqtgraph's names
        levels = []
        for spacing, values in super().tickValues(minVal, maxVal, size):
            whole = [v for v in values if float(v).is_integer()]
            if whole:
                levels.append((max(spacing, 1.0), whole))
        return levels


class LivePlot(QWidget):
    changed = Signal()  # something a redraw should show (new data, a setting)

    def __init__(self, title: str, x_label: str, y_label: str, *, log_y: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        _configure_once()
        self.title = title
        self.x_label = x_label
        self.y_label = y_label
        self.log_y = log_y
        self._series: dict[str, tuple[SeriesBuffer, pg.PlotDataItem]] = {}
        self._dirty: set[str] = set()
        self._symbolled: set[str] = set()  # series drawn with a symbol at every point

        self.plot_widget = pg.PlotWidget(axisItems={"bottom": IntegerAxis("bottom")})
        item = self.plot_item
        item.showGrid(x=True, y=True, alpha=0.25)
        item.setLogMode(y=log_y)
        # Peak downsampling keeps spikes visible when 100k points share a few hundred pixels;
        # clipping draws only what is in view after zooming in.
        item.setDownsampling(auto=True, mode="peak")
        item.setClipToView(True)
        item.setMenuEnabled(True)
        self.set_axis_labels(x_label, y_label)
        self._show_title()
        self._marker = pg.ScatterPlotItem(size=9, pen=pg.mkPen(theme.PLOT_FOREGROUND), brush=pg.mkBrush(None))
        self._marker.setZValue(10)
        self._marker.hide()
        item.addItem(self._marker, ignoreBounds=True)
        self.plot_widget.scene().sigMouseMoved.connect(self._on_scene_mouse_moved)
        menu = item.getViewBox().menu
        menu.addSeparator()
        menu.addAction("Export picture (PNG)…", self._on_png_button_clicked)
        menu.addAction("Export numbers (CSV)…", self._on_csv_button_clicked)

        self.readout = QLabel(" ")
        self.readout.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.readout.setStyleSheet("color: #555; font-size: 8pt")
        self.png_button = self._tool_button("PNG", "Save this plot as a PNG image", self._on_png_button_clicked)
        self.csv_button = self._tool_button("CSV", "Save this plot's numbers as CSV", self._on_csv_button_clicked)
        self.header = QHBoxLayout()
        self.header.setContentsMargins(4, 0, 4, 0)
        self.header.addWidget(self.readout, 1)
        self.header.addWidget(self.png_button)
        self.header.addWidget(self.csv_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(self.header)
        layout.addWidget(self.plot_widget, 1)

    @property
    def plot_item(self) -> pg.PlotItem:
        return self.plot_widget.getPlotItem()

    def set_min_y_span(self, span: float) -> None:
        """Never show less than ``span`` of the y axis, automatic ranges included (pyqtgraph
        widens a narrower range about its centre)."""
        self.plot_item.getViewBox().setLimits(minYRange=span)

    def _tool_button(self, text: str, tip: str, slot) -> QToolButton:  # noqa: ANN001
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setAutoRaise(True)
        button.clicked.connect(slot)
        return button

    def set_title(self, title: str) -> None:
        self.title = title
        self._show_title()

    def _show_title(self) -> None:
        # The legend sits in the title line: inside the plot it would hide the newest points,
        # which is where a live curve is read.
        entries = []
        for name, (_, curve) in self._series.items():
            pen = curve.opts["pen"]
            color = pen.color().name()
            mark = "●" if curve.opts.get("symbol") else "╍" if pen.style() == Qt.PenStyle.DashLine else "━"
            entries.append(f"<span style='color:{color}'>{mark}</span>&nbsp;{html.escape(name)}")
        legend = ("&nbsp;&nbsp;&nbsp;<span style='font-size:8pt; color:#444'>"
                  + "&nbsp;&nbsp;".join(entries) + "</span>") if entries else ""
        self.plot_item.setTitle(f"{html.escape(self.title)}{legend}")

    def show_note(self, text: str) -> None:
        """Stand in for the plot while it has nothing to draw (d·lr of optimizers that do not
        adapt, epoch losses before an epoch ends), so an empty frame does not suggest that
        something broke; "" shows the plot again."""
        if not hasattr(self, "note"):
            self.note = QLabel()
            self.note.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.note.setWordWrap(True)
            self.note.setStyleSheet("color: #777; background: white")
            self.layout().addWidget(self.note, 1)
        self.note.setText(text)
        self.note.setVisible(bool(text))
        self.plot_widget.setVisible(not text)
        for button in (self.png_button, self.csv_button):
            button.setEnabled(not text)

    def set_axis_labels(self, x_label: str, y_label: str) -> None:
        self.x_label, self.y_label = x_label, y_label
        item = self.plot_item
        item.setLabel("bottom", x_label)
        item.setLabel("left", y_label)
        # Units live in the label text ("VRAM (MB)"); an automatic SI prefix would turn
        # 2000 MB into "2 kMB".
        for side in ("left", "bottom"):
            axis = item.getAxis(side)
            axis.enableAutoSIPrefix(False)
            # Two tick levels, not three: the finest grid level cost most of a redraw's
            # paint time (~3 ms per axis) and only cluttered the plot.
            axis.setStyle(maxTickLevel=1)

    # ---------------------------------------------------------------- series
    def add_series(self, name: str, color: str, *, width: float = 1.5, symbol: str | None = None,
                   dashed: bool = False, buffer: SeriesBuffer | None = None) -> SeriesBuffer:
        buffer = buffer if buffer is not None else SeriesBuffer()
        pen = pg.mkPen(color, width=width, style=Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine)
        options = {"pen": pen, "name": name}
        if symbol:
            options.update(symbol=symbol, symbolSize=7, symbolBrush=pg.mkBrush(color), symbolPen=pg.mkPen(color))
            self._symbolled.add(name)
        curve = pg.PlotDataItem(**options)
        if width > 1:
            # Qt strokes a wide antialiased polyline very slowly (~50-300 ms for a few
            # thousand zigzag points); drawn as segments it takes a few ms and looks the same.
            curve.curve.setSegmentedLineMode("on")
        self.plot_item.addItem(curve)
        self._series[name] = (buffer, curve)
        self._show_title()
        return buffer

    def has_series(self, name: str) -> bool:
        return name in self._series

    def series(self, name: str) -> SeriesBuffer:
        return self._series[name][0]

    def series_names(self) -> list[str]:
        return list(self._series)

    def append(self, name: str, x: float, y: float) -> None:
        self._series[name][0].append(x, y)
        self._dirty.add(name)

    def mark_dirty(self, name: str | None = None) -> None:
        self._dirty.update(self._series if name is None else (name,))
        self.changed.emit()

    def refresh(self) -> bool:
        """Hand the changed series to pyqtgraph; True when anything was redrawn."""
        if not self._dirty:
            return False
        for name in self._dirty:
            buffer, curve = self._series[name]
            x, y = buffer.view()
            self._mark_lone_point(name, curve, len(x) == 1)
            curve.setData(x, y)
        self._dirty.clear()
        return True

    def _mark_lone_point(self, name: str, curve: pg.PlotDataItem, lone: bool) -> None:
        # A line through one point draws nothing: a curve with a single point shows it as a dot.
        if name in self._symbolled:
            return
        if lone != bool(curve.opts.get("symbol")):
            colour = curve.opts["pen"].color()
            curve.setSymbol("o" if lone else None)
            curve.setSymbolSize(7)
            curve.setSymbolBrush(pg.mkBrush(colour))
            curve.setSymbolPen(pg.mkPen(colour))

    def clear(self) -> None:
        for name, (buffer, curve) in self._series.items():
            buffer.clear()
            self._mark_lone_point(name, curve, False)
            curve.setData([], [])
        self._dirty.clear()
        self._marker.hide()
        self.readout.setText(" ")
        # Empty curves leave the last run's ranges on the axes: start the next run's from
        # scratch (auto range takes over with its first point).
        view = self.plot_item.getViewBox()
        view.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        view.enableAutoRange()

    def remove_series(self, name: str) -> None:
        self._symbolled.discard(name)
        _, curve = self._series.pop(name)
        self.plot_item.removeItem(curve)
        self._dirty.discard(name)
        self._show_title()

    # ---------------------------------------------------------------- hover readout
    def nearest(self, scene_pos: QPointF) -> tuple[str, float, float] | None:
        """The drawn point nearest the mouse, in screen distance, over all visible series."""
        view_box = self.plot_item.getViewBox()
        if not view_box.sceneBoundingRect().contains(scene_pos):
            return None
        at = view_box.mapSceneToView(scene_pos)
        best: tuple[float, str, float, float] | None = None
        for name, (buffer, curve) in self._series.items():
            x, y = buffer.view()
            if not len(x) or not curve.isVisible():
                continue
            i = int(np.searchsorted(x, at.x()))
            for j in (i - 1, i):
                if 0 <= j < len(x):
                    shown_y = self._to_view_y(float(y[j]))
                    if shown_y is None:
                        continue
                    point = view_box.mapViewToScene(QPointF(float(x[j]), shown_y))
                    distance = math.hypot(point.x() - scene_pos.x(), point.y() - scene_pos.y())
                    if best is None or distance < best[0]:
                        best = (distance, name, float(x[j]), float(y[j]))
        return None if best is None else best[1:]

    def _to_view_y(self, y: float) -> float | None:
        if not math.isfinite(y):
            return None
        if self.log_y:
            return math.log10(y) if y > 0 else None
        return y

    def _on_scene_mouse_moved(self, scene_pos: QPointF) -> None:
        found = self.nearest(scene_pos)
        if found is None:
            self._marker.hide()
            self.readout.setText(" ")
            return
        name, x, y = found
        self._marker.setData([x], [self._to_view_y(y)])
        self._marker.show()
        self.readout.setText(f"{self.x_label} {x:g} · {name} {y:.4g}")

    # ---------------------------------------------------------------- export
    def export_png(self, path: str | Path) -> None:
        if not self.plot_widget.grab().save(str(path), "PNG"):
            raise OSError(f"could not write {path}")

    def export_csv(self, path: str | Path) -> None:
        """One column per series when they share their x values (the usual case), else
        one row per point with the series named."""
        views = {name: buffer.view() for name, (buffer, _) in self._series.items()}
        xs = [x for x, _ in views.values()]
        shared = bool(xs) and all(len(x) == len(xs[0]) and np.array_equal(x, xs[0]) for x in xs)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if shared:
                writer.writerow([self.x_label, *views])
                columns = [xs[0], *(y for _, y in views.values())]
                writer.writerows(zip(*(c.tolist() for c in columns)))
            else:
                writer.writerow(["series", self.x_label, self.y_label])
                for name, (x, y) in views.items():
                    writer.writerows((name, a, b) for a, b in zip(x.tolist(), y.tolist()))

    def _default_name(self, suffix: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.title.lower()).strip("_") + suffix

    def _on_png_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save plot as PNG", start_path("plot", self._default_name(".png")),
                                              "PNG images (*.png)")
        if path:
            remember_folder("plot", path)
            self._export(self.export_png, path)

    def _on_csv_button_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save plot data as CSV",
                                              start_path("plot", self._default_name(".csv")), "CSV files (*.csv)")
        if path:
            remember_folder("plot", path)
            self._export(self.export_csv, path)

    def _export(self, write, path: str) -> None:  # noqa: ANN001
        try:
            write(path)
        except OSError as error:
            QMessageBox.warning(self, "Export failed", f"Could not write {path}:\n{error}")
