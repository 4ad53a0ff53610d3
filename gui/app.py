"""Start the desktop app: a QApplication and the main window, nothing heavy before it shows."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from core import __version__
from core.system.paths import log_dir
from core.system.resources import resource_path


def make_app() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LoRA Kiln")
    app.setOrganizationName("LoRA Kiln")
    app.setApplicationVersion(__version__)
    # The window and taskbar icon; on Wayland the icon comes from the desktop entry of this name.
    app.setWindowIcon(QIcon(str(resource_path("icons", "lorakiln.png"))))
    app.setDesktopFileName("lorakiln")
    from gui import theme

    theme.apply(app)
    from gui.gc_guard import gui_collector

    gui_collector().hold()  # for the app's life: garbage is collected in the GUI thread only
    return app  # type: ignore[return-value]


LOG_FILE = "lorakiln.log"
LOG_MAX_BYTES = 2_000_000  # per file; with the backups at most ~8 MB of logs ever
LOG_BACKUPS = 3


class AppLogHandler(logging.handlers.RotatingFileHandler):
    """The app's own log file (a class of its own, so setting up again can find it)."""


def setup_logging(folder: Path | None = None) -> Path | None:
    """A rotating log file in the per-user log folder (or ``folder``): a windowed build has
    no console. Calling it again replaces the handler instead of doubling every line.
    Returns the log file, or None when the folder cannot be written."""
    folder = folder or log_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handler = AppLogHandler(folder / LOG_FILE, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS,
                                encoding="utf-8")
    except OSError:
        return None  # an unwritable log folder must not stop the app
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("lorakiln")
    for old in [h for h in root.handlers if isinstance(h, AppLogHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return folder / LOG_FILE


def run(preset: str | None = None) -> int:
    app = make_app()
    setup_logging()
    from gui.main_window import MainWindow

    window = MainWindow()
    window.show()

    # Load after the window is on screen, so the first paint is not held up.
    def open_first() -> None:
        if preset:
            from core.config.presets import PresetError, find_preset

            try:
                window.open_preset(str(find_preset(preset)))
            except PresetError as err:
                window.show_message("Cannot open preset", str(err))
                window.open_initial_preset()
        else:
            window.open_initial_preset()

    QTimer.singleShot(0, open_first)
    return app.exec()
