#!/usr/bin/env python3
"""Screenshots of the whole app mid-training on the demo project, one per tab.

    xvfb-run -a -s "-screen 0 1400x950x24" .venv/bin/python packaging/screenshots/app_tour.py [OUT_DIR]

Opens the real main window on the demo project, starts training from the Training tab,
waits until some steps are plotted, then grabs the Dataset, Parameters and Training tabs
(the window as a person sees it) into OUT_DIR (default docs/screenshots).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QEventLoop, QSettings, QTimer

    # Settings in a temporary folder: the tour opens the demo project whatever was opened last,
    # and the person's own settings are not touched.
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp(prefix="lorakiln-shots-"))

    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow

    app = make_app()
    window = MainWindow()
    window.ask_unsaved = lambda: DISCARD
    window.ask_stop_training = lambda: True
    window.resize(1400, 930)
    window.show()
    window.open_initial_preset()
    window.project.config.output.output_dir = str(Path("/tmp") / "lorakiln-tour-runs")

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)

    pump(3)  # the dataset scan and thumbnails
    # Start once the VRAM forecast is made: a run started while the forecast's thread imports
    # diffusers can fail with an ImportError (a race this tour leaves to its own fix).
    window.vram.refresh_now()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (window.vram.state is not None and window.vram.state.complete):
        pump(0.5)
    window.tabs.setCurrentWidget(window.training_tab)
    if not window.training_tab.start():
        print("training did not start:", window.training_tab.status_label.text())
        return 1
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        pump(0.5)
        if window.training_tab.progress.value() >= 45:
            break
    for name, tab in (("training", window.training_tab), ("dataset", window.dataset_tab),
                      ("parameters", window.parameters_tab)):
        window.tabs.setCurrentWidget(tab)
        pump(1.0)
        window.grab().save(str(out / f"app_{name}.png"))
        print("saved", out / f"app_{name}.png")
    window.training_tab.stop()
    window.training_tab.request_stop_and_wait(120_000)
    QTimer.singleShot(0, window.close)
    pump(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
