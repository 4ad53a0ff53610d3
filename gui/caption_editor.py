"""The selected image's facts and its caption, editable and saved next to the image.

The caption file is ``<image stem><caption extension of its subset>``, as the scan reads
it. Saving an image that had none creates it: until then the image trained with its class
tokens, which is what the editor starts from.
"""

from __future__ import annotations

import codecs
import html
import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from core.system.atomic import write_text_atomic
from core.data.scan import ResolvedSubset
from core.data.dataset_plan import PlanImage
from gui import theme


def caption_path_for(image: Path, extension: str) -> Path | None:
    """Where an image's caption lives; None when the subset reads no caption files."""
    if not extension:
        return None
    if not extension.startswith("."):
        extension = "." + extension  # the scan adds the dot too (and warns)
    return Path(os.path.splitext(image)[0] + extension)


def read_caption_text(path: Path) -> str:
    """The whole caption file (not just the trained first line), so saving keeps every line."""
    raw = path.read_bytes()
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


class CaptionEditor(QWidget):
    saved = Signal(str)  # the caption file written

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._image: PlanImage | None = None
        self._path: Path | None = None
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText("Caption: comma-separated tags or a sentence; only the first line is trained")
        self.text.setMaximumHeight(90)
        self.save_button = QPushButton("Save caption")
        self.status = QLabel()
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.status, 1)
        row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.info)
        layout.addWidget(self.text)
        layout.addWidget(self.note)
        layout.addLayout(row)
        layout.addStretch(1)
        self.save_button.clicked.connect(self._on_save_button_clicked)
        self.text.modificationChanged.connect(self._on_text_modification_changed)
        self.show_image(None, None)

    @property
    def image(self) -> PlanImage | None:
        return self._image

    @property
    def caption_path(self) -> Path | None:
        return self._path

    def show_image(self, image: PlanImage | None, subset: ResolvedSubset | None) -> None:
        same = image is not None and self._image is not None and image.record.path == self._image.record.path
        self._image = image
        if not same:
            self.status.clear()
        if image is None:
            self._path = None
            self.info.setText("<i>Select a thumbnail to see its bucket and edit its caption.</i>")
            self.note.clear()
            self._set_text("", editable=False)
            return
        record, a = image.record, image.assignment
        upscaled = " (enlarged)" if a.upscaled else ""
        self.info.setText(
            f"<b>{html.escape(record.path.name)}</b> — {record.size[0]}x{record.size[1]} px, "
            f"bucket <b>{a.bucket[0]}x{a.bucket[1]}</b>, resized to {a.resized[0]}x{a.resized[1]}{upscaled}, "
            f"{image.repeats} repeat(s){' (regularisation)' if record.is_reg else ''}")
        extension = subset.params.caption_extension if subset else ""
        self._path = caption_path_for(record.path, extension)
        if self._path is None:
            self.note.setText("This folder reads no caption files (its caption extension is empty).")
            self._set_text(record.caption, editable=False)
            return
        if same and self.text.document().isModified():
            return  # a re-plan while the person types must not throw their edit away
        notes = []
        if self._path.is_file():
            try:
                text = read_caption_text(self._path)
            except OSError as error:
                text = record.caption
                notes.append(f"cannot read {self._path.name}: {error.strerror or error}")
        else:
            # Until a file exists the image trains with its class tokens: start from them.
            text = subset.params.class_tokens if subset else ""
            notes.append(f"No caption file yet: it trains with "
                         f"{'the class tokens' if text else 'an empty caption'}; saving creates {self._path.name}.")
        if record.caption and subset and (subset.params.caption_prefix or subset.params.caption_suffix):
            notes.append(f"Trained as: {record.caption}")
        self.note.setText(html.escape(" ".join(notes)))
        self._set_text(text, editable=True)
        # Without a file, saving the class tokens unchanged is already a change: it creates one.
        self.save_button.setEnabled(not self._path.is_file())

    def _set_text(self, text: str, editable: bool) -> None:
        self.text.setPlainText(text)
        self.text.setReadOnly(not editable)
        self.text.document().setModified(False)
        self.save_button.setEnabled(False)

    def save(self) -> bool:
        """Write the caption (UTF-8, atomically); returns False and says why on failure."""
        if self._path is None or self._image is None:
            return False
        try:
            write_text_atomic(self._path, self.text.toPlainText())
        except OSError as error:
            self.status.setText(f"<span style='color:{theme.ERROR}'>Cannot save {html.escape(str(self._path))}: "
                                f"{html.escape(error.strerror or str(error))}</span>")
            return False
        self.text.document().setModified(False)
        self.status.setText(f"<span style='color:{theme.OK}'>Saved {html.escape(self._path.name)}</span>")
        self.saved.emit(str(self._path))
        return True

    def _on_save_button_clicked(self) -> None:
        self.save()

    def _on_text_modification_changed(self, modified: bool) -> None:
        writable = self._path is not None and not self.text.isReadOnly()
        self.save_button.setEnabled(writable and (modified or not self._path.is_file()))
