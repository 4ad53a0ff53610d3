"""A dialog showing what `lorakiln inspect` prints for a LoRA file."""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit, QVBoxLayout, QWidget
from gui.screen import fit_to_screen


class InspectDialog(QDialog):
    def __init__(self, path: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from core.kohya.lora_info import InspectError, format_inspection, inspect_lora

        self.setWindowTitle(f"Inspect LoRA — {path}")
        fit_to_screen(self, QSize(760, 640))
        self.text = QPlainTextEdit(readOnly=True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        try:
            self.text.setPlainText(format_inspection(inspect_lora(path)))
        except InspectError as err:
            self.text.setPlainText(str(err))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(buttons)
