"""Shared set-up for tests that drive the Training tab: a tab whose failures are captured
instead of opening the error dialog (which would wait for a person offscreen)."""

from gui.project import Project
from gui.training_tab import TrainingTab


def quiet_training_tab(qtbot, timeout_ms: int):  # noqa: ANN001, ANN201 - a fixture generator
    """Yield a Training tab for one test; afterwards stop and wait for any run it left, so a
    failed assertion mid-run never leaves a training thread behind."""
    tab = TrainingTab(Project())
    tab.resize(1200, 800)
    qtbot.addWidget(tab)
    tab.errors = []
    tab.show_error = tab.errors.append
    yield tab
    tab.request_stop_and_wait(timeout_ms)
