#!/usr/bin/env python3
"""Screenshots of a stopped run and what can be done with it: the Training tab after Stop with
Resume run, and the Runs tab's context menu opened on that run among others.

    Xvfb :99 -screen 0 1280x720x24 &
    DISPLAY=:99 .venv/bin/python packaging/screenshots/run_actions.py [RUNS]

The window opens at the size the screen gives it (run once per screen size). It trains the demo
project (256 px, no samples) and stops it after a few steps, so the run saves its LoRA and a
training state to resume from; RUNS (default /tmp/sweep_runs, made by runs_tab.py) is listed
beside it so the menu opens over a table of real runs. Settings and the new run go to a
temporary folder: the person's own are not touched. Writes
docs/screenshots/training_resume_WxH.png and runs_menu_WxH.png (the whole screen, menu included).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import wait  # noqa: E402 - beside this script
STOP_AFTER = 12  # steps plotted before Stop: enough for a curve


def main() -> int:
    others = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/sweep_runs")
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="lorakiln-shots-"))
    from PySide6.QtCore import QSettings, Qt

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(home))
    from core.studies.run_queue import RunQueue
    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow

    app = make_app()
    window = MainWindow()  # sized by the screen
    window.ask_unsaved = lambda: DISCARD
    window.ask_stop_training = lambda: True
    window.training_tab.use_queue(RunQueue.load(home / "queue.json"))
    window.show()
    window.open_initial_preset()
    for field, value in (("output.output_dir", str(home / "runs")), ("dataset.resolution", 256),
                         ("training.duration", "steps"), ("training.max_train_steps", 200),
                         ("sampling.every_n_steps", 0), ("sampling.every_n_epochs", 0)):
        window.project.set_value(field, value)

    def pump(seconds: float) -> None:
        wait(app, lambda: False, seconds)

    def grab(name: str) -> None:
        area = window.screen().availableGeometry()
        path = out / f"{name}_{area.width()}x{area.height()}.png"
        app.primaryScreen().grabWindow(0).save(str(path))
        print("saved", path)

    # Start once the VRAM forecast is made: a run started while the forecast's thread imports
    # diffusers can fail with an ImportError (a race this tour leaves to its own fix).
    window.vram.refresh_now()
    wait(app, lambda: window.vram.state is not None and window.vram.state.complete, 300)
    tab = window.training_tab
    window.tabs.setCurrentWidget(tab)
    if not tab.start():
        print("training did not start:", tab.status_label.text(), file=sys.stderr)
        return 1
    if not wait(app, lambda: len(tab.plots.loss.series("raw")) >= STOP_AFTER, 900):
        print(f"the run did not reach step {STOP_AFTER}", file=sys.stderr)
        return 1
    tab.stop()
    if not wait(app, lambda: not tab.is_running() and tab.resume_run_button.isVisible(), 300):
        print("the stopped run offers no Resume", file=sys.stderr)
        return 1
    pump(1.0)
    grab("training_resume")

    runs = window.runs_tab
    if others.is_dir():
        runs.add_folder(others)
    window.tabs.setCurrentWidget(runs)
    runs.refresh()
    table = runs.run_list.table
    stopped = str(Path(tab.run_dir))
    if not wait(app, lambda: runs.run_list.record(stopped) is not None, 120):
        print("the stopped run is not listed", file=sys.stderr)
        return 1
    runs.select_runs([stopped])
    pump(2.0)
    row = next(r for r in range(table.rowCount())
               if table.item(r, 0).data(Qt.ItemDataRole.UserRole) == stopped)
    menu = runs.run_menu(runs.run_list.record(stopped))
    menu.popup(table.viewport().mapToGlobal(table.visualItemRect(table.item(row, 0)).center()))
    pump(1.0)
    grab("runs_menu")
    menu.close()
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
