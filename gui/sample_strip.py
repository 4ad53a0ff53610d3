"""Sample images as they are generated: a strip of thumbnails, newest first; a click opens
the image larger with its prompt, step and file."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QListView, QListWidget, QListWidgetItem, QVBoxLayout, QWidget
from gui.screen import fit_to_screen

THUMBNAIL = 96
EVENT_ROLE = Qt.ItemDataRole.UserRole


class SampleStrip(QListWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setGridSize(QSize(THUMBNAIL + 16, THUMBNAIL + 34))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setWordWrap(True)
        self.setUniformItemSizes(True)
        self.setToolTip("Samples, newest first; click one to see it larger")
        self.itemClicked.connect(self._on_self_item_clicked)
        self.viewer: SampleViewer | None = None

    def titled(self, title: str) -> QWidget:
        """This strip under a centred title, as the plots beside it have one."""
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        label = QLabel(title)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(label)
        layout.addWidget(self, 1)
        return box

    def add_sample(self, sample: object) -> QListWidgetItem:
        """``sample`` is a SampleImage event."""
        pixmap = QPixmap(sample.path)
        item = QListWidgetItem(f"step {sample.step} · #{sample.index + 1}")
        if not pixmap.isNull():
            item.setIcon(QIcon(pixmap.scaled(THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio,
                                             _transform(pixmap))))
        item.setToolTip(sample.prompt)
        item.setData(EVENT_ROLE, sample)
        self.insertItem(0, item)
        return item

    def show_sample(self, item: QListWidgetItem) -> SampleViewer:
        if self.viewer is None:
            self.viewer = SampleViewer(self.window())
        self.viewer.show_sample(item.data(EVENT_ROLE))
        self.viewer.show()
        self.viewer.raise_()
        return self.viewer

    def _on_self_item_clicked(self, item: QListWidgetItem) -> None:
        self.show_sample(item)


def _transform(pixmap: QPixmap) -> Qt.TransformationMode:
    # Tiny demo samples are blown up: keep their pixels sharp rather than blurred.
    return Qt.TransformationMode.FastTransformation if pixmap.width() < THUMBNAIL \
        else Qt.TransformationMode.SmoothTransformation


class SampleViewer(QDialog):
    MIN_SIDE = 384
    MAX_SIDE = 768

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sample — LoRA Kiln")
        layout = QVBoxLayout(self)
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.caption)

    def show_sample(self, sample: object) -> None:
        pixmap = QPixmap(sample.path)
        if pixmap.isNull():
            self.image.setText(f"Cannot read {sample.path}")
        else:
            side = max(pixmap.width(), pixmap.height())
            target = min(max(side, self.MIN_SIDE), self.MAX_SIDE)
            self.image.setPixmap(pixmap.scaled(target, target, Qt.AspectRatioMode.KeepAspectRatio,
                                               _transform(pixmap) if side < target else
                                               Qt.TransformationMode.SmoothTransformation))
        self.caption.setText(f"<b>{html.escape(sample.prompt)}</b><br>step {sample.step}, epoch {sample.epoch}"
                             f" · <code>{html.escape(Path(sample.path).name)}</code>")
        self.adjustSize()
        fit_to_screen(self)
