"""Start the desktop app: a QApplication and the main window, nothing heavy before it shows."""

from __future__ import annotations

import logging
import logging.handlers
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from core import __version__
from core.paths import log_dir


def make_app() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LoRA Kiln")
    app.setOrganizationName("LoRA Kiln")
    app.setApplicationVersion(__version__)
    from gui import theme

    theme.apply(app)
    return app  # type: ignore[return-value]


def setup_logging() -> None:
    """A rotating log file in the per-user log folder: a windowed build has no console."""
    try:
        log_dir().mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_dir() / "lorakiln.log", maxBytes=2_000_000,
                                                       backupCount=3, encoding="utf-8")
    except OSError:
        return  # an unwritable log folder must not stop the app
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("lorakiln")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run(preset: str | None = None) -> int:
    app = make_app()
    setup_logging()
    from gui.main_window import MainWindow

    window = MainWindow()
    window.show()

    # Load after the window is on screen, so the first paint is not held up.
    def open_first() -> None:
        if preset:
            from core.presets import PresetError, find_preset

            try:
                window.open_preset(str(find_preset(preset)))
            except PresetError as err:
                window.show_message("Cannot open preset", str(err))
                window.open_initial_preset()
        else:
            window.open_initial_preset()

    QTimer.singleShot(0, open_first)
    return app.exec()
