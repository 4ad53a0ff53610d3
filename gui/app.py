"""Start the desktop app: a QApplication and the main window, nothing heavy before it shows."""

from __future__ import annotations

import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from core import __version__

DEFAULT_PRESET = "demo"


def make_app() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LoRA Kiln")
    app.setOrganizationName("LoRA Kiln")
    app.setApplicationVersion(__version__)
    from gui import theme

    theme.apply(app)
    return app  # type: ignore[return-value]


def run(preset: str | None = None) -> int:
    app = make_app()
    from gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    # Load after the window is on screen, so the first paint is not held up.
    QTimer.singleShot(0, lambda: window.open_preset_ref(preset or DEFAULT_PRESET))
    return app.exec()
