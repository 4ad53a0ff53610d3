"""Screenshots of the Training tab during and after a tiny run of the demo model, for the docs.

Run from the repository root: ``QT_QPA_PLATFORM=offscreen python packaging/screenshots/training_tab.py``.
It trains 40 steps (samples every 10), grabs the tab after ~20 steps to
docs/screenshots/training_running.png and after the run to docs/screenshots/training.png.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import wait  # noqa: E402 - beside this script



from gui.app import make_app  # noqa: E402
from gui.project import Project  # noqa: E402
from gui.training_tab import TrainingTab  # noqa: E402
from tests.engine_fixtures import tiny_config  # noqa: E402

OUTPUT = ROOT / "docs" / "screenshots" / "training.png"
RUNNING = ROOT / "docs" / "screenshots" / "training_running.png"
STEPS = 40
TIMEOUT_S = 600  # a loaded machine is slow; the shot waits for the steps, not the clock


def _settle(app, seconds: float = 0.3) -> None:  # noqa: ANN001
    # Let the throttled redraw and the repaints after it happen before grabbing.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    # diffusers imported here, before any thread: a run started while the VRAM forecast's thread
    # imports it can fail with an ImportError (a race this tour leaves to its own fix).
    import diffusers

    diffusers.AutoencoderKL, diffusers.UNet2DConditionModel  # resolves its lazy attributes now

    app = make_app()
    project = Project()
    tab = TrainingTab(project)
    tab.resize(1400, 900)
    tab.show()
    finished: list[object] = []
    tab.run_finished.connect(finished.append)
    with tempfile.TemporaryDirectory() as tmp:
        config = tiny_config(Path(tmp), steps=STEPS)
        config.sampling.prompts = "kiln, blue background --w 64 --h 64 --s 8\nkiln on a table --w 64 --h 64 --s 8"
        config.sampling.every_n_steps = 10
        project.config = config
        tab.start()
        if not wait(app, lambda: len(tab.plots.loss.series("raw")) >= STEPS // 2 or finished, TIMEOUT_S):
            print("training did not reach the middle", file=sys.stderr)
            return 1
        _settle(app, 0.15)
        RUNNING.parent.mkdir(parents=True, exist_ok=True)
        running_ok = tab.grab().save(str(RUNNING))
        if not wait(app, lambda: bool(finished), TIMEOUT_S):
            tab.request_stop_and_wait(30_000)
            print("training did not finish", file=sys.stderr)
            return 1
        _settle(app)
        ok = tab.grab().save(str(OUTPUT)) and running_ok
    if not ok:
        print(f"could not write {OUTPUT}", file=sys.stderr)
        return 1
    print(RUNNING)
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
