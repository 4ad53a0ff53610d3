"""Screenshot of the Parameters tab over the demo preset, for the docs.

Run from the repository root: ``QT_QPA_PLATFORM=offscreen python packaging/screenshots/params_tab.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.config.presets import find_preset, load_preset  # noqa: E402
from gui.app import make_app  # noqa: E402
from gui.parameters_tab import ParametersTab  # noqa: E402
from gui.project import Project  # noqa: E402

OUTPUT = ROOT / "docs" / "screenshots" / "parameters.png"


def main() -> int:
    app = make_app()
    project = Project()
    tab = ParametersTab(project)
    project.load(load_preset(find_preset("demo")), builtin=True)
    tab.validate_now()
    tab.resize(1100, 800)
    tab.show()
    for _ in range(5):  # layout settles over a few passes once the window is shown
        app.processEvents()
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    if not tab.grab().save(str(OUTPUT)):
        print(f"could not write {OUTPUT}", file=sys.stderr)
        return 1
    print(OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
