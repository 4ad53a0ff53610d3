#!/usr/bin/env python3
"""Benchmark: time from starting the process to the main window on screen.

    xvfb-run -a .venv/bin/python benchmarks/bench_startup.py [--runs 5]

Starts a fresh Python process that builds the real main window (all three tabs, the
demo project loaded) and reports when it is exposed, against a reference process that
shows a bare PySide6 window, alternating, measured from the parent's clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APP = """
import sys
from PySide6.QtCore import QTimer
from gui.app import make_app
from gui.main_window import MainWindow
app = make_app()
w = MainWindow()
w.show()
def check():
    if w.windowHandle() is not None and w.windowHandle().isExposed():
        print("visible", flush=True)
        w.open_initial_preset()
        app.processEvents()
        print("torch loaded:", "torch" in sys.modules, flush=True)
        app.quit()
    else:
        QTimer.singleShot(5, check)
QTimer.singleShot(0, check)
app.exec()
"""

BARE = """
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QLabel
app = QApplication([])
w = QLabel("hello"); w.show()
def check():
    if w.windowHandle().isExposed():
        print("visible", flush=True); app.quit()
    else:
        QTimer.singleShot(5, check)
QTimer.singleShot(0, check)
app.exec()
"""


def time_to_visible(code: str) -> tuple[float, str]:
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = process.stdout.readline()
    elapsed = time.perf_counter() - start
    rest = process.communicate(timeout=120)[0]
    assert line.strip() == "visible", line
    return elapsed, rest.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    app_times, bare_times, note = [], [], ""
    for _ in range(args.runs):
        elapsed, note = time_to_visible(APP)
        app_times.append(elapsed)
        bare_times.append(time_to_visible(BARE)[0])
    a, b = statistics.median(app_times), statistics.median(bare_times)
    print(f"platform {os.environ.get('QT_QPA_PLATFORM') or 'default (xcb)'}; {args.runs} runs each")
    print(f"LoRA Kiln main window visible: median {a:.2f} s (all: {', '.join(f'{t:.2f}' for t in app_times)})")
    print(f"bare PySide6 window visible:   median {b:.2f} s")
    print(f"ratio {a / b:.2f}; after the window showed and the demo project loaded, {note}")


if __name__ == "__main__":
    main()
