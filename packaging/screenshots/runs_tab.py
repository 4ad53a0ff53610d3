#!/usr/bin/env python3
"""Screenshots of the Runs tab comparing a resolution sweep, and of the training queue.

    xvfb-run -a -s "-screen 0 1400x950x24" .venv/bin/python packaging/screenshots/runs_tab.py [RUNS] [OUT_DIR]

RUNS (default /tmp/sweep_runs) should hold the demo project's sweep of dataset.resolution =
256, 384, 512, as made by
``lorakiln sweep demo --vary dataset.resolution=256,384,512 --set training.batch_size=3
--set training.duration=steps --set training.max_train_steps=8 --output-dir /tmp/sweep_runs``
(batch size 3, because with the demo preset's 2 every bucket fills whole batches and the
batches per epoch would not change with the bucket count); when it holds no runs, this
script trains those three itself. It grabs the main window with the Runs tab comparing the
three runs (docs/screenshots/runs_compare.png), then queues two more demo runs, starts the
queue and grabs the Training tab with the queue panel mid-run (runs_queue.png). Settings and
the queue go to a temporary folder: the person's own are not touched.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FIELD, VALUES = "dataset.resolution", ("256", "384", "512")


def train_sweep(runs: Path) -> None:
    from core.config.presets import find_preset, load_preset
    from core.studies.sweep import SweepSpec, sweep_configs
    from core.training.engine import Trainer
    from core.training.events import ListSink

    base = load_preset(find_preset("demo")).config
    base.output.output_dir = str(runs)
    base.training.duration = base.training.duration.STEPS
    base.training.max_train_steps = 8
    base.training.batch_size = 3  # so partial batches make batches/epoch follow the buckets
    for label, config in sweep_configs(base, SweepSpec(FIELD, VALUES)):
        result = Trainer(config, ListSink()).run()
        print(label, getattr(result, "reason", result))


def main() -> int:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/sweep_runs")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="lorakiln-shots-"))
    from PySide6.QtCore import QEventLoop, QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(home))
    from core.studies.run_index import discover_runs
    from core.studies.run_queue import RunQueue
    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow

    from core.studies.sweep import SweepSpec

    def sweep_runs() -> list[str]:
        newest = {}  # per value, the newest completed run (discover_runs lists newest first)
        for record in discover_runs([runs]):
            if record.status == "completed" and record.name.startswith("demo_resolution-"):
                newest.setdefault(record.name, str(record.path))
        return sorted(newest.values(), key=lambda p: int(p.rsplit("-", 1)[1]))

    if len(sweep_runs()) < len(VALUES):
        train_sweep(runs)
    sweep_dirs = sweep_runs()

    app = make_app()
    window = MainWindow()
    window.ask_unsaved = lambda: DISCARD
    window.ask_stop_training = lambda: True
    window.training_tab.use_queue(RunQueue.load(home / "queue.json"))
    window.resize(1400, 930)
    window.show()
    window.open_initial_preset()
    window.project.set_value("output.output_dir", str(runs))

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)

    def wait_for(done, seconds: float) -> bool:  # noqa: ANN001
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pump(0.2)
            if done():
                return True
        return False

    window.tabs.setCurrentWidget(window.runs_tab)
    window.runs_tab.select_runs(sweep_dirs)
    if not wait_for(lambda: len(window.runs_tab.compare.labels) == len(sweep_dirs), 60):
        print("the runs were not compared", file=sys.stderr)
        return 1
    pump(1.0)
    window.grab().save(str(out / "runs_compare.png"))
    print("saved", out / "runs_compare.png")

    # The queue: the sweep's three runs done, two more queued, the first of them training.
    queue = window.training_tab.queue
    _sweep_id, items = queue.add_sweep(window.project.snapshot(), SweepSpec(FIELD, VALUES))
    for item, run_dir in zip(items, sweep_dirs):
        queue.mark(item.id, "completed", run_dir, "completed after 8 steps")
    window.project.set_value("output.output_dir", str(home / "runs"))  # keep RUNS to the sweep
    window.project.set_value("training.duration", "steps")
    window.project.set_value("training.max_train_steps", 60)
    window.project.set_value("network.dim", 8)
    window.training_tab.queue_panel.add_project(window.project, "demo, dim 8")
    window.project.set_value("optimizer.learning_rate", 5e-4)
    window.training_tab.queue_panel.add_project(window.project, "demo, dim 8, lr 5e-4")
    window.tabs.setCurrentWidget(window.training_tab)
    if not window.training_tab.queue_panel.run():
        print("the queue did not start", file=sys.stderr)
        return 1
    wait_for(lambda: len(window.training_tab.plots.loss.series("raw")) >= 25, 300)
    pump(1.0)
    window.grab().save(str(out / "runs_queue.png"))
    print("saved", out / "runs_queue.png")
    window.training_tab.queue_panel.finish_after_current()
    window.training_tab.request_stop_and_wait(120_000)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
