"""Screenshot of the Dataset tab over the demo preset, for the docs.

Run from the repository root: ``QT_QPA_PLATFORM=offscreen python packaging/screenshots/dataset_tab.py``.
It waits for the scan and for the visible thumbnails, selects one so the caption editor
shows, and writes docs/screenshots/dataset.png.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import wait  # noqa: E402 - beside this script



from core.config.presets import find_preset, load_preset  # noqa: E402
from gui.app import make_app  # noqa: E402
from gui.dataset_tab import DatasetTab  # noqa: E402
from gui.project import Project  # noqa: E402
from gui.thumbnails import LOADED_ROLE  # noqa: E402

OUTPUT = ROOT / "docs" / "screenshots" / "dataset.png"
TIMEOUT_S = 30


def main() -> int:
    app = make_app()
    project = Project()
    tab = DatasetTab(project)
    tab.resize(1200, 850)
    tab.show()
    project.load(load_preset(find_preset("demo")), builtin=True)
    if not wait(app, lambda: tab.plan is not None and not tab.scanner.running, TIMEOUT_S):
        print(f"the scan did not finish: {tab.error or 'timed out'}", file=sys.stderr)
        return 1
    model = tab.thumbnail_model
    # An upscaled image shows every part of the overlay: crop, frame and the marker.
    upscaled = next((i for i in tab.plan.images if i.assignment.upscaled), tab.plan.images[0])
    tab.select_image(str(upscaled.record.path))
    visible = [model.index(row) for row in range(model.rowCount())
               if tab.thumbnails.visualRect(model.index(row)).intersects(tab.thumbnails.viewport().rect())]
    wait(app, lambda: tab.loader.pending == 0 and all(index.data(LOADED_ROLE) for index in visible), TIMEOUT_S)
    for _ in range(5):  # the last thumbnails' repaints
        app.processEvents()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    ok = tab.grab().save(str(OUTPUT))
    tab.shutdown()
    if not ok:
        print(f"could not write {OUTPUT}", file=sys.stderr)
        return 1
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
