#!/usr/bin/env python3
"""Screenshots of the VRAM forecast, for the docs: the Parameters tab with its forecast line and
details, and the warning before Start with the cheapest changes that fit.

    Xvfb :99 -screen 0 1600x1000x24 &
    DISPLAY=:99 .venv/bin/python packaging/screenshots/vram.py 1600x1000

The window fills a screen of the given size (run once per size: 1600x1000 and 1280x720), and
the whole screen is grabbed, so the dialog shows over the window. The project is the
sd15-lora-8gb preset at batch 4 and 768 px without gradient checkpointing, on a chosen 12 GB
card; the base model is LoRA Kiln's shipped SD 1.5 configs (the forecast needs no weights).
Nothing is trained. Settings go to a temporary folder: the person's own are not touched.
Writes docs/screenshots/vram_parameters_WxH.png and vram_warning_WxH.png.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
TIMEOUT_S = 600  # a full-size forecast takes seconds on a desktop, longer on a slow machine


def project_config():  # noqa: ANN201 - TrainConfig
    from core.config.presets import find_preset, load_preset

    config = load_preset(find_preset("sd15-lora-8gb")).config
    config.dataset.subsets = load_preset(find_preset("demo")).config.dataset.subsets
    config.model.base_model = "builtin:sd15"  # shown by name: a path would show where this copy lies
    config.training.batch_size = 4
    config.training.gradient_checkpointing = False
    config.dataset.resolution = (768, 768)
    config.output.output_dir = tempfile.mkdtemp(prefix="lorakiln-shots-runs-")
    return config


def main() -> int:
    size = sys.argv[1] if len(sys.argv) > 1 else "1600x1000"
    width, height = (int(v) for v in size.split("x"))
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, tempfile.mkdtemp(prefix="lorakiln-shots-"))
    from common import wait

    from core.config.presets import LoadedPreset
    from gui.app import make_app
    from gui.main_window import DISCARD, MainWindow
    from gui.settings import settings
    from gui.vram_forecaster import CARD_SETTING

    settings().setValue(CARD_SETTING, 12)
    app = make_app()
    window = MainWindow()
    window.ask_unsaved = lambda: DISCARD
    window.project.load(LoadedPreset(project_config(), None, "SD 1.5 at 768 px, batch 4"))
    window.setGeometry(0, 0, width, height)
    window.tabs.setCurrentWidget(window.parameters_tab)
    window.show()
    vram = window.vram
    vram.refresh_now()
    if not wait(app, lambda: vram.state is not None and vram.state.complete, TIMEOUT_S):
        print("the forecast did not come", file=sys.stderr)
        return 1
    window.parameters_tab.vram_panel.details_button.setChecked(True)
    wait(app, lambda: False, 0.5)

    def grab(name: str) -> bool:
        path = out / f"vram_{name}_{width}x{height}.png"
        if not app.primaryScreen().grabWindow(0).save(str(path)):
            print(f"could not write {path}", file=sys.stderr)
            return False
        print(path)
        return True

    if not grab("parameters"):
        return 1
    window.tabs.setCurrentWidget(window.training_tab)
    window.training_tab.start_after_vram_check()
    dialog = window.training_tab.vram_dialog
    if dialog is None or not wait(app, lambda: dialog.apply_button.isVisible(), 10):
        print("the warning did not open", file=sys.stderr)
        return 1
    wait(app, lambda: False, 0.5)
    ok = grab("warning")
    dialog.cancel_button.click()  # nothing is trained
    time.sleep(0.1)
    window.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
