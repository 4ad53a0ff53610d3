"""The selected image's facts and its caption, editable and saved next to the image.

The caption file is ``<image stem><caption extension of its subset>``, as the scan reads
it. Saving an image that had none creates it: until then the image trained with its class
tokens, which is what the editor starts from.

Only a caption file's first line trains (as in sd-scripts), so the editor is one line and
shows exactly that line as the scan reads it; the file's other lines are kept as they were
on save and a note says they exist. The built-in demo dataset ships inside the app: it is
shown read-only, with an offer to copy it to the person's own folder.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from core.data.captions import decode_caption, split_first_line
from core.system.atomic import write_text_atomic
from core.system.resources import resources_root
from core.data.scan import ResolvedSubset
from core.data.dataset_plan import PlanImage
from core.system.words import count
from gui import theme


def caption_path_for(image: Path, extension: str) -> Path | None:
    """Where an image's caption lives; None when the subset reads no caption files."""
    if not extension:
        return None
    if not extension.startswith("."):
        extension = "." + extension  # the scan adds the dot too (and warns)
    return Path(os.path.splitext(image)[0] + extension)


def read_caption_text(path: Path) -> str:
    """The whole caption file (not just the trained first line), so saving keeps every line.

    Decoded as the scan decodes it, so line one here is the line that trains."""
    return decode_caption(path.read_bytes())[0]


def is_shipped(path: Path) -> bool:
    """True for a file inside the app's own resources (the demo dataset): never written."""
    try:
        return path.resolve().is_relative_to(resources_root().resolve())
    except OSError:
        return False


def _more_lines(rest: str) -> int:
    return sum(1 for line in re.split(r"\r\n|\r|\n", rest) if line.strip())


class CaptionEditor(QWidget):
    saved = Signal(str)  # the caption file written
    copy_demo_requested = Signal()  # "Copy the demo dataset to my folder…" was clicked

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._image: PlanImage | None = None
        self._path: Path | None = None
        self._rest = ""  # the file after its first line (its line break on): kept on save
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.note = QLabel()
        self.note.setWordWrap(True)
        self.text = QLineEdit()
        self.text.setPlaceholderText("Caption: comma-separated tags or a sentence (one line: the line that trains)")
        self.save_button = QPushButton("Save caption")
        self.copy_demo_button = QPushButton("Copy the demo dataset to my folder…")
        self.copy_demo_button.setToolTip("The built-in demo dataset is part of the app and read-only: copy it to a "
                                         "folder of yours and switch this project to the copy to edit its captions")
        self.copy_demo_button.hide()
        self.status = QLabel()
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.status, 1)
        row.addWidget(self.copy_demo_button)
        row.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.info)
        layout.addWidget(self.text)
        layout.addWidget(self.note)
        layout.addLayout(row)
        layout.addStretch(1)
        self.save_button.clicked.connect(self._on_save_button_clicked)
        self.copy_demo_button.clicked.connect(self.copy_demo_requested)
        self.text.textEdited.connect(self._on_text_edited)
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
        self.copy_demo_button.setVisible(image is not None and is_shipped(image.record.path))
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
            f"{count(image.repeats, 'repeat')}{' (regularisation)' if record.is_reg else ''}")
        extension = subset.params.caption_extension if subset else ""
        self._path = caption_path_for(record.path, extension)
        if self._path is None:
            self.note.setText("This folder reads no caption files (its caption extension is empty).")
            self._set_text(record.caption, editable=False)
            return
        if same and self.text.isModified():
            return  # a re-plan while the person types must not throw their edit away
        notes = []
        rest = ""
        if self._path.is_file():
            try:
                first, rest = split_first_line(read_caption_text(self._path))
                text = first.strip()  # as the scan strips it: what is shown is what trains
            except OSError as error:
                text = record.caption
                notes.append(f"cannot read {self._path.name}: {error.strerror or error}")
            more = _more_lines(rest)
            if more:
                notes.append(f"{self._path.name} has {count(more, 'more line')} after this one; "
                             f"only the first line trains, and saving keeps the others unchanged.")
        else:
            # Until a file exists the image trains with its class tokens: start from them.
            text = subset.params.class_tokens if subset else ""
            notes.append(f"No caption file yet: it trains with "
                         f"{'the class tokens' if text else 'an empty caption'}; saving creates {self._path.name}.")
        if record.caption and subset and (subset.params.caption_prefix or subset.params.caption_suffix):
            notes.append(f"Trained as: {record.caption}")
        shipped = is_shipped(self._path)
        if shipped:
            notes.insert(0, "The built-in demo dataset is part of the app and read-only: copy it to your "
                            "folder to edit its captions.")
        self.note.setText(html.escape(" ".join(notes)))
        self._set_text(text, editable=not shipped)
        self._rest = rest
        # Without a file, saving the class tokens unchanged is already a change: it creates one.
        self.save_button.setEnabled(not shipped and not self._path.is_file())

    def _set_text(self, text: str, editable: bool) -> None:
        self._rest = ""
        self.text.setText(text)
        self.text.setCursorPosition(0)
        self.text.setReadOnly(not editable)
        self.text.setModified(False)
        self.save_button.setEnabled(False)

    def save(self) -> bool:
        """Write the caption (UTF-8, atomically) before the file's other lines, which are
        kept as they were; returns False and says why on failure."""
        if self._path is None or self._image is None:
            return False
        if self.text.isReadOnly():
            self.status.setText(f"<span style='color:{theme.ERROR}'>Not saved: {html.escape(self._path.name)} "
                                "is read-only here; copy the demo dataset to your folder to edit it.</span>")
            return False
        # A pasted line break would start a line that never trains: keep the caption one line.
        line = re.sub(r"[\r\n]+", " ", self.text.text())
        try:
            write_text_atomic(self._path, line + self._rest)
        except OSError as error:
            self.status.setText(f"<span style='color:{theme.ERROR}'>Cannot save {html.escape(str(self._path))}: "
                                f"{html.escape(error.strerror or str(error))}</span>")
            return False
        self.text.setModified(False)
        self.status.setText(f"<span style='color:{theme.OK}'>Saved {html.escape(self._path.name)}</span>")
        self.saved.emit(str(self._path))
        return True

    def _on_save_button_clicked(self) -> None:
        self.save()

    def _on_text_edited(self, _text: str) -> None:
        writable = self._path is not None and not self.text.isReadOnly()
        self.save_button.setEnabled(writable)
