"""The plan at a glance: the bucket histogram, the numbers the trainer will use, and what
the plan warns about. Every number here is read off the same ``DatasetPlan`` the trainer
trains by, so what the person reads is what the run does."""

from __future__ import annotations

import math

from PySide6.QtCore import QObject, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QMouseEvent, QPainter, QPaintEvent
from PySide6.QtWidgets import (QGridLayout, QLabel, QListWidget, QSizePolicy, QStackedWidget, QTabWidget,
                               QToolTip, QVBoxLayout, QWidget)

from core.data.scan import ScanResult
from core.data.dataset_plan import DatasetPlan
from core.system.words import count as count_of
from gui import theme

Bucket = tuple[int, int]
MAX_BAR_SLOT = 110  # px per bar, gap included

# (key, caption) of the numbers shown; the keys are public for the tests and the main window.
NUMBERS: list[tuple[str, str]] = [
    ("images", "Images"),
    ("with_repeats", "With repeats"),
    ("buckets", "Buckets"),
    ("batches_per_epoch", "Batches / epoch"),
    ("steps_per_epoch", "Steps / epoch"),
    ("epochs", "Epochs"),
    ("max_train_steps", "Total steps"),
]


def bucket_label(bucket: Bucket) -> str:
    return f"{bucket[0]}x{bucket[1]}"


class BucketHistogram(QWidget):
    """One bar per bucket (tall to wide), height = images with repeats; buckets holding fewer
    images than the batch size are drawn in the warning colour. Clicking a bar selects it."""

    bucket_clicked = Signal(object)  # the bucket, or None when the selected bar is clicked again

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._buckets: list[tuple[Bucket, int]] = []
        self._batch_size = 1
        self._selected: Bucket | None = None
        self.setMinimumHeight(100)  # a 1280x720 screen leaves the Dataset tab little height
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(400, 180)

    def set_data(self, buckets: dict[Bucket, int], batch_size: int) -> None:
        # Sorted by aspect ratio, so the histogram reads from portrait to landscape.
        self._buckets = sorted(buckets.items(), key=lambda item: (item[0][0] / item[0][1], item[0]))
        self._batch_size = batch_size
        if self._selected not in buckets:
            self._selected = None
        self.update()

    def set_selected(self, bucket: Bucket | None) -> None:
        self._selected = bucket
        self.update()

    def bars(self) -> list[tuple[Bucket, int]]:
        return list(self._buckets)

    def _layout(self) -> tuple[QRectF, float, bool]:
        """(bar area, width per bar, whether labels are drawn vertically)."""
        metrics = QFontMetrics(self.font())
        longest = max((metrics.horizontalAdvance(bucket_label(b)) for b, _ in self._buckets), default=0)
        count = max(len(self._buckets), 1)
        # A few buckets get bars of a readable width, centred, rather than slabs.
        slot = min((self.width() - 16) / count, MAX_BAR_SLOT)
        area = QRectF((self.width() - slot * count) / 2, metrics.height() + 4, slot * count, 0)
        # Labels go vertical when they do not fit under their bar side by side.
        vertical = longest + 6 > slot
        label_height = longest + 6 if vertical else metrics.height() + 4
        area.setHeight(max(self.height() - area.top() - label_height, 10))
        return area, slot, vertical

    def bar_rects(self) -> list[QRectF]:
        """Each bar's rectangle, in the order of :meth:`bars`."""
        area, slot, _ = self._layout()
        top = max((count for _, count in self._buckets), default=1)
        gap = min(6.0, slot * 0.2)
        rects = []
        for i, (_, count) in enumerate(self._buckets):
            height = area.height() * count / top
            rects.append(QRectF(area.left() + i * slot + gap / 2, area.bottom() - height, slot - gap, height))
        return rects

    def bar_at(self, x: float) -> Bucket | None:
        area, slot, _ = self._layout()
        if not self._buckets or not area.left() <= x < area.right():
            return None
        return self._buckets[min(int((x - area.left()) / slot), len(self._buckets) - 1)][0]

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt API
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().base())
        if not self._buckets:
            painter.setPen(QColor(theme.PLOT_FOREGROUND))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No buckets")
            return
        metrics = QFontMetrics(self.font())
        area, slot, vertical = self._layout()
        # All counts or none: a few numbers among many bars would look like a pattern.
        widest = max(metrics.horizontalAdvance(str(count)) for _, count in self._buckets)
        show_counts = slot >= widest + 2
        for i, ((bucket, count), bar) in enumerate(zip(self._buckets, self.bar_rects())):
            x = area.left() + i * slot
            colour = QColor(theme.WARNING if count < self._batch_size else theme.ACCENT)
            if self._selected is not None and bucket != self._selected:
                colour.setAlpha(90)
            painter.fillRect(bar, colour)
            painter.setPen(QColor(theme.PLOT_FOREGROUND))
            if show_counts:
                painter.drawText(QRectF(x, bar.top() - metrics.height() - 2, slot, metrics.height()),
                                 Qt.AlignmentFlag.AlignCenter, str(count))
            self._draw_label(painter, metrics, bucket, x, slot, area.bottom(), vertical)
        painter.setPen(QColor(theme.PLOT_FOREGROUND))
        painter.drawLine(QPointF(area.left(), area.bottom()), QPointF(area.right(), area.bottom()))

    def _draw_label(self, painter: QPainter, metrics: QFontMetrics, bucket: Bucket, x: float, slot: float,
                    baseline: float, vertical: bool) -> None:
        text = bucket_label(bucket)
        if not vertical:
            painter.drawText(QRectF(x, baseline + 2, slot, metrics.height()), Qt.AlignmentFlag.AlignCenter, text)
            return
        if slot < metrics.height() * 0.8:
            return  # too many buckets to label each one; the tooltip names them
        painter.save()
        painter.translate(x + slot / 2 + metrics.ascent() / 2 - 1, baseline + 4)
        painter.rotate(90)
        painter.drawText(QPointF(0, 0), text)
        painter.restore()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        bucket = self.bar_at(event.position().x())
        counts = dict(self._buckets)
        if bucket is not None:
            batches = math.ceil(counts[bucket] / self._batch_size)
            QToolTip.showText(event.globalPosition().toPoint(),
                              f"{bucket_label(bucket)}: {count_of(counts[bucket], 'image')} with repeats, "
                              f"{count_of(batches, 'batch', 'batches')}",
                              self)
        else:
            QToolTip.hideText()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt API
        bucket = self.bar_at(event.position().x())
        if bucket is None:
            return
        self._selected = None if bucket == self._selected else bucket
        self.update()
        self.bucket_clicked.emit(self._selected)


class PlanView(QWidget):
    """Histogram, numbers, warnings, notes and skipped files; or the error that stops planning."""

    bucket_clicked = Signal(object)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.histogram = BucketHistogram()
        self.numbers: dict[str, QLabel] = {}
        numbers_page = QWidget()
        grid = QGridLayout(numbers_page)
        grid.setContentsMargins(0, 0, 0, 0)
        for column, (key, caption) in enumerate(NUMBERS):
            value = QLabel("—")
            value.setAlignment(Qt.AlignmentFlag.AlignCenter)
            value.setStyleSheet("font-size: 15pt; font-weight: bold;")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            title = QLabel(caption)
            title.setAlignment(Qt.AlignmentFlag.AlignCenter)
            grid.addWidget(value, 0, column)
            grid.addWidget(title, 1, column)
            self.numbers[key] = value
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.setStyleSheet(f"color: {theme.ERROR}; font-weight: bold;")
        self._stack = QStackedWidget()
        self._stack.addWidget(numbers_page)
        self._stack.addWidget(self.error_label)
        self._stack.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.warnings = self._list()
        self.notes = self._list()
        self.skipped = self._list()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.warnings, "Warnings")
        self.tabs.addTab(self.notes, "Notes")
        self.tabs.addTab(self.skipped, "Skipped")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._stack)
        caption = QLabel("Images per bucket, with repeats (click a bar to show its images; "
                         "orange: fewer than the batch size)")
        caption.setWordWrap(True)
        layout.addWidget(caption)
        layout.addWidget(self.histogram, 3)
        layout.addWidget(self.tabs, 2)
        self.histogram.bucket_clicked.connect(self.bucket_clicked)

    @staticmethod
    def _list() -> QListWidget:
        widget = QListWidget()
        widget.setWordWrap(True)
        widget.setAlternatingRowColors(True)
        return widget

    @property
    def showing_error(self) -> bool:
        return self._stack.currentWidget() is self.error_label

    def number(self, key: str) -> str:
        return self.numbers[key].text()

    def set_plan(self, plan: DatasetPlan) -> None:
        steps = plan.steps
        values = {
            "images": len(plan.images),
            "with_repeats": plan.num_train_images + plan.num_reg_images,
            "buckets": len(plan.buckets),
            "batches_per_epoch": plan.batches_per_epoch,
            "steps_per_epoch": steps.steps_per_epoch if steps else 0,
            "epochs": steps.epochs if steps else 0,
            "max_train_steps": steps.max_train_steps if steps else 0,
        }
        for key, value in values.items():
            self.numbers[key].setText(str(value))
        self._stack.setCurrentWidget(self._stack.widget(0))
        self.histogram.set_data(plan.buckets, plan.batch_size)
        self._fill(plan.scan_warnings + plan.warnings, plan.notes,
                   [f"{s.display_path}: {s.reason}" for s in plan.skipped])

    def set_error(self, message: str, scan: ScanResult | None = None) -> None:
        """Show why there is no plan; the scan's own findings stay listed when there was one."""
        self.error_label.setText(f"Cannot plan this dataset:\n{message}")
        self._stack.setCurrentWidget(self.error_label)
        for label in self.numbers.values():
            label.setText("—")
        self.histogram.set_data({}, 1)
        self._fill(list(scan.warnings) if scan else [], [],
                   [f"{s.display_path}: {s.reason}" for s in scan.skipped] if scan else [])

    def _fill(self, warnings: list[str], notes: list[str], skipped: list[str]) -> None:
        for widget, items, title in ((self.warnings, warnings, "Warnings"), (self.notes, notes, "Notes"),
                                     (self.skipped, skipped, "Skipped")):
            widget.clear()
            widget.addItems(items)
            if widget is self.warnings:
                for row in range(widget.count()):
                    widget.item(row).setForeground(QColor(theme.WARNING))
            self.tabs.setTabText(self.tabs.indexOf(widget), f"{title} ({len(items)})")
