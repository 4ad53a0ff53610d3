"""The main window. This issue's version shows the open preset and its validation;
the Dataset, Parameters, Training and Runs tabs are built over it in later issues."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMessageBox, QTextBrowser

from core import __version__
from core.presets import LoadedPreset, PresetError, find_preset, load_preset
from core.validation import ERROR, validate


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("LoRA Kiln")
        self.resize(1000, 700)
        self.preset: LoadedPreset | None = None
        self._summary = QTextBrowser()
        self._summary.setOpenExternalLinks(False)
        self.setCentralWidget(self._summary)
        self._build_menus()
        self.statusBar().showMessage("Ready")

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        open_action = QAction("&Open preset…", self)
        open_action.setShortcut(QKeySequence.StandardKey.Open)
        open_action.triggered.connect(self._on_open_triggered)
        file_menu.addAction(open_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        help_menu = self.menuBar().addMenu("&Help")
        about_action = QAction("&About LoRA Kiln", self)
        about_action.triggered.connect(self._on_about_triggered)
        help_menu.addAction(about_action)

    def open_preset_ref(self, ref: str) -> bool:
        """Open a preset file or built-in preset name; errors are shown, never swallowed."""
        try:
            self.show_preset(load_preset(find_preset(ref)))
        except PresetError as err:
            QMessageBox.warning(self, "Cannot open preset", str(err))
            self.statusBar().showMessage(f"Could not open {ref}")
            return False
        return True

    def show_preset(self, loaded: LoadedPreset) -> None:
        self.preset = loaded
        name = Path(loaded.path).stem if loaded.path else "untitled"
        self.setWindowTitle(f"{name} — LoRA Kiln")
        problems = validate(loaded.config)
        rows = "".join(
            f"<li><b>{p.severity}</b> {html.escape(str(p))}</li>" for p in problems
        ) or "<li>No problems: this configuration can be trained.</li>"
        cfg = loaded.config
        self._summary.setHtml(
            f"<h2>{html.escape(name)}</h2><p>{html.escape(loaded.description)}</p>"
            f"<p>Base model: <code>{html.escape(cfg.model.base_model or '(none)')}</code><br>"
            f"Image folders: <code>{html.escape(', '.join(s.image_dir for s in cfg.dataset.subsets) or '(none)')}</code><br>"
            f"Resolution: {cfg.dataset.resolution[0]}x{cfg.dataset.resolution[1]}, "
            f"batch size {cfg.training.batch_size}, optimizer {cfg.optimizer.type.value}</p>"
            f"<h3>Validation</h3><ul>{rows}</ul>"
        )
        n_errors = sum(p.severity == ERROR for p in problems)
        self.statusBar().showMessage(f"Opened {loaded.path}" + (f" — {n_errors} error(s)" if n_errors else ""))

    def _on_open_triggered(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open preset", "", "LoRA Kiln presets (*.toml)")
        if path:
            self.open_preset_ref(path)

    def _on_about_triggered(self) -> None:
        QMessageBox.about(self, "About LoRA Kiln",
                          f"<b>LoRA Kiln {__version__}</b><p>Trains Stable Diffusion LoRAs in the "
                          "Kohya style and shows what the training does while it does it.</p>")
