"""Screenshots of the app as it opens on the screen it is given (run under Xvfb at 1280x720
and at 1600x1000): the Dataset tab, the Parameters tab with a problem marked, and the Runs
tab comparing the runs in a folder. Writes docs/screenshots/size_<tab>_<W>x<H>.png.

    Xvfb :94 -screen 0 1280x720x24 & DISPLAY=:94 python packaging/screenshots/screen_sizes.py [runs]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/sweep_runs")
    out = ROOT / "docs" / "screenshots"
    from PySide6.QtCore import QEventLoop, QSettings

    # Settings in a temporary folder: the tour opens the demo project whatever was opened last,
    # and the person's own settings are not touched.
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp(prefix="lorakiln-shots-"))

    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow

    app = make_app()
    window = MainWindow()  # sized by the screen, as a person would first see it
    window.ask_unsaved = lambda: DISCARD
    window.ask_stop_training = lambda: True
    window.show()
    window.open_initial_preset()

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)

    pump(3)
    area = window.screen().availableGeometry()
    size = f"{area.width()}x{area.height()}"
    print("screen", size, "window frame", window.frameGeometry())
    window.parameters_tab.advanced.setChecked(True)
    window.project.set_value("optimizer.type", "Prodigy")
    window.project.set_value("schedule.warmup_steps", 10)
    window.project.set_value("schedule.warmup_ratio", 0.1)  # an error, marked at its field
    window.parameters_tab.validate_now()
    window.parameters_tab.reveal("schedule.warmup_steps")
    if runs.is_dir():
        window.runs_tab.add_folder(runs)
    shots = [("dataset", window.dataset_tab), ("parameters", window.parameters_tab), ("runs", window.runs_tab)]
    for name, tab in shots:
        window.tabs.setCurrentWidget(tab)
        if tab is window.runs_tab:
            window.runs_tab.run_list.select_paths([p for p in sorted(runs.iterdir()) if (p / "config.toml").is_file()])
        pump(2.0)
        path = out / f"size_{name}_{size}.png"
        window.grab().save(str(path))
        print("saved", path)
    window.dataset_tab.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
