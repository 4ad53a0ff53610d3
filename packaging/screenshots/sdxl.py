#!/usr/bin/env python3
"""Screenshots of SDXL: the Training tab during a run of the tiny built-in SDXL model, and the
Runs tab comparing an SDXL resolution sweep (768 / 1024 / 1280), for the docs.

    xvfb-run -a -s "-screen 0 1400x950x24" .venv/bin/python packaging/screenshots/sdxl.py [RUNS] [OUT_DIR]

RUNS (default /tmp/sdxl_sweep) holds the sweep; when it holds no runs this script trains them
(the demo project on builtin:demo-sdxl, U-Net only, batch 1, 8 steps each). The tiny model
draws noise: the pictures show the app's views of an SDXL run, not an SDXL's images.
Settings go to a temporary folder: the person's own are not touched.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FIELD, VALUES = "dataset.resolution", ("768", "1024", "1280")
PROMPTS = "pottery, blue glaze --w 256 --h 256 --s 6\npottery on a table --w 256 --h 256 --s 6"


def sdxl_demo_config():  # noqa: ANN201 - TrainConfig
    from core.config.presets import find_preset, load_preset
    from core.models.sdxl import DEMO_SDXL_MODEL

    config = load_preset(find_preset("demo")).config
    config.model.base_model = DEMO_SDXL_MODEL
    config.network.train_text_encoder = False
    config.dataset.bucket_reso_steps = 32
    config.training.batch_size = 1
    config.training.duration = config.training.duration.STEPS
    return config


def train_sweep(runs: Path) -> None:
    from core.studies.sweep import SweepSpec, sweep_configs
    from core.training.engine import Trainer
    from core.training.events import ListSink

    base = sdxl_demo_config()
    base.output.output_dir, base.output.output_name = str(runs), "sdxl"
    base.training.max_train_steps = 8
    base.sampling.prompts, base.sampling.every_n_epochs, base.sampling.every_n_steps = "", 0, 0
    base.dataset.min_bucket_reso, base.dataset.max_bucket_reso = 384, 2560
    for label, config in sweep_configs(base, SweepSpec(FIELD, VALUES)):
        result = Trainer(config, ListSink()).run()
        print(label, getattr(result, "reason", result), getattr(result, "summary", ""))


def main() -> int:
    runs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/sdxl_sweep")
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="lorakiln-shots-"))
    from PySide6.QtCore import QEventLoop, QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(home))
    from core.studies.run_index import discover_runs
    from core.studies.run_queue import RunQueue
    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow

    def sweep_runs() -> list[str]:
        newest = {}
        for record in discover_runs([runs]):
            if record.status == "completed" and record.name.startswith("sdxl_resolution-"):
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
    if not wait_for(lambda: len(window.runs_tab.compare.labels) == len(sweep_dirs), 120):
        print("the runs were not compared", file=sys.stderr)
        return 1
    pump(1.0)
    window.grab().save(str(out / "sdxl_compare.png"))
    print("saved", out / "sdxl_compare.png")

    # An SDXL run in the Training tab, mid-run, with its samples.
    config = sdxl_demo_config()
    config.dataset.resolution = (1024, 1024)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 512, 2048
    config.training.max_train_steps = 40
    config.sampling.prompts, config.sampling.every_n_steps = PROMPTS, 10
    config.output.output_dir = str(home / "runs")
    window.project.config = config
    window.project.loaded.emit()
    window.tabs.setCurrentWidget(window.training_tab)
    window.training_tab.start()
    if not wait_for(lambda: len(window.training_tab.plots.loss.series("raw")) >= 22, 900):
        print("the SDXL run did not reach step 22", file=sys.stderr)
        return 1
    pump(1.0)
    window.grab().save(str(out / "sdxl_training.png"))
    print("saved", out / "sdxl_training.png")
    window.resize(1280, 720)
    pump(1.0)
    window.grab().save(str(out / "sdxl_training_1280x720.png"))
    window.training_tab.request_stop_and_wait(120_000)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
