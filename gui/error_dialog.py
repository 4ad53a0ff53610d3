"""The dialog a failed run shows: what went wrong in plain words, what to try, and the full
traceback and log behind buttons. A windowed build has no console, so this is where every
training error ends up."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (QApplication, QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QPlainTextEdit,
                               QPushButton, QVBoxLayout, QWidget)

from gui import theme
from gui.screen import fit_to_screen

TITLES = {
    "oom": "Out of memory",
    "nan": "The loss became invalid",
    "config": "The configuration has errors",
    "data": "A problem with the dataset",
    "model": "The model could not be loaded",
    "disk": "Could not write to disk",
    "error": "Training failed",
}


class ErrorDialog(QDialog):
    def __init__(self, failed: object, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.failed = failed
        self.setWindowTitle(f"{TITLES.get(failed.kind, TITLES['error'])} — LoRA Kiln")
        self.setMinimumWidth(560)
        layout = QVBoxLayout(self)

        self.summary_label = QLabel(f"<b style='color:{theme.ERROR}'>{html.escape(failed.summary)}</b>")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.summary_label)

        self.advice_label = QLabel(self._advice_html(failed.advice))
        self.advice_label.setWordWrap(True)
        self.advice_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.advice_label.setVisible(bool(failed.advice))
        layout.addWidget(self.advice_label)

        self.checkpoint_label = QLabel(self._checkpoint_html(failed))
        self.checkpoint_label.setWordWrap(True)
        self.checkpoint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.checkpoint_label.setVisible(bool(self.checkpoint_label.text()))
        layout.addWidget(self.checkpoint_label)

        log_text = (f"Log: <code>{html.escape(failed.log_path)}</code>" if failed.log_path
                    else "No log file was written (the run ended before its folder existed).")
        self.log_label = QLabel(log_text)
        self.log_label.setWordWrap(True)
        self.log_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.log_label)

        self.details = QPlainTextEdit(failed.traceback)
        self.details.setReadOnly(True)
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setMinimumHeight(220)
        self.details.setVisible(False)
        layout.addWidget(self.details, 1)

        buttons = QHBoxLayout()
        self.details_button = QPushButton("Show details")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._on_details_button_toggled)
        self.copy_button = QPushButton("Copy details")
        self.copy_button.clicked.connect(self._on_copy_button_clicked)
        self.open_folder_button = QPushButton("Open log folder")
        self.open_folder_button.setEnabled(bool(self.log_folder))
        self.open_folder_button.clicked.connect(self._on_open_folder_button_clicked)
        for button in (self.details_button, self.copy_button, self.open_folder_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        buttons.addWidget(close)
        layout.addLayout(buttons)
        fit_to_screen(self, self.sizeHint())

    @staticmethod
    def _checkpoint_html(failed: object) -> str:
        """Whether the work so far survives: the most important line after a long run fails."""
        if failed.last_checkpoint:
            return f"The last good checkpoint is kept: <code>{html.escape(failed.last_checkpoint)}</code>"
        if failed.run_dir and failed.kind in ("oom", "nan", "disk", "error"):
            return ("No checkpoint had been saved yet. For long runs, set output.save_every_n_epochs or "
                    "output.save_every_n_steps (with output.save_state to resume) to keep the work so far.")
        return ""

    @staticmethod
    def _advice_html(advice: tuple[str, ...]) -> str:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in advice)
        return f"What to try:<ul style='margin-left:-20px'>{items}</ul>"

    @property
    def log_folder(self) -> Path | None:
        if self.failed.log_path:
            return Path(self.failed.log_path).parent
        return Path(self.failed.run_dir) if self.failed.run_dir else None

    def details_text(self) -> str:
        """Everything a bug report needs, in one copyable block."""
        lines = [self.failed.summary, *[f"- {a}" for a in self.failed.advice]]
        if self.failed.last_checkpoint:
            lines.append(f"last good checkpoint: {self.failed.last_checkpoint}")
        if self.failed.log_path:
            lines.append(f"log: {self.failed.log_path}")
        return "\n".join(lines) + "\n\n" + self.failed.traceback

    def _on_details_button_toggled(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setText("Hide details" if shown else "Show details")
        self.adjustSize()
        fit_to_screen(self)

    def _on_copy_button_clicked(self) -> None:
        QApplication.clipboard().setText(self.details_text())

    def _on_open_folder_button_clicked(self) -> None:
        folder = self.log_folder
        if folder is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
