"""core/ never imports Qt: the engine must run in the CLI, in tests and on servers."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import core

QT_MODULES = ("PySide6", "shiboken6", "pyqtgraph", "PyQt5", "PyQt6")


def test_importing_every_core_module_loads_no_qt():
    # A __main__ module is a script (`python -m core.cli`): importing it runs the command.
    names = sorted(m.name for m in pkgutil.walk_packages(core.__path__, "core.") if not m.name.endswith(".__main__"))
    assert "core.config.presets" in names
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {QT_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_cli_help_loads_no_qt_and_no_torch():
    # `lorakiln --help` (and every headless command's start) stays light.
    script = ("import sys\nfrom core.cli.main import build_parser\nbuild_parser().format_help()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'torch')))\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
