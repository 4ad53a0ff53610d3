"""Test set-up shared by the whole suite: offscreen Qt, no model hub, and per-user folders
(runs, caches, logs, settings) kept inside a temporary folder — before anything imports."""

import os
import sys
import tempfile

# Without a display pytest-qt aborts the whole run unless Qt is told to draw offscreen;
# this must happen before PySide6 is first imported.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"

_HOME = tempfile.mkdtemp(prefix="lorakiln-test-home-")
for _name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
    os.environ[_name] = os.path.join(_HOME, _name.lower())


def pytest_configure(config):  # noqa: ARG001 - pytest hook
    from PySide6.QtCore import QSettings

    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, os.path.join(_HOME, "qsettings"))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _gui_thread_garbage_collection(request):
    """Qt tests run under the app's garbage-collection regime (gui.gc_guard): collected in the
    GUI thread only, never in a training, grid or scan thread."""
    if "qtbot" not in request.fixturenames and "qapp" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("qapp")
    from gui.gc_guard import gui_collector

    collector = gui_collector()
    collector.hold()
    try:
        yield
    finally:
        collector.release()
        if "gui.vram_forecaster" in sys.modules:  # windows left open stop forecasting
            sys.modules["gui.vram_forecaster"].shutdown_all()
