"""Closing the window during a run: the GUI thread never waits for the save. The run is asked
to stop, the window stays open and keeps handling events while the LoRA is saved in the
training QThread, and it closes itself once the run has ended and its thread is gone."""

import threading

import pytest
from PySide6.QtCore import QThread

import core.training.engine as engine_module
from core.training.events import Finished, Status
from gui.main_window import DISCARD, MainWindow, settings


class SlowStopTrainer:
    """Runs until asked to stop, then "saves" until the test lets it finish."""

    saving = threading.Event()
    may_finish = threading.Event()
    thread: list[QThread] = []

    def __init__(self, config, sink, control, **_options):  # noqa: ANN001
        self.sink, self.control = sink, control

    def run(self):  # noqa: ANN201
        SlowStopTrainer.thread.append(QThread.currentThread())
        self.sink.emit(Status("training", "training"))
        while not self.control.stop_requested:
            threading.Event().wait(0.01)
        SlowStopTrainer.saving.set()
        SlowStopTrainer.may_finish.wait(10)
        return Finished("stopped", "", None, 3, 1, 0.1)


@pytest.fixture
def window(qtbot, monkeypatch):
    settings().clear()
    monkeypatch.setattr(engine_module, "Trainer", SlowStopTrainer)
    SlowStopTrainer.saving, SlowStopTrainer.may_finish, SlowStopTrainer.thread = (threading.Event(),
                                                                                threading.Event(), [])
    w = MainWindow()
    qtbot.addWidget(w)
    w.messages = []
    w.show_message = lambda title, text: w.messages.append((title, text))
    w.ask_unsaved = lambda: DISCARD
    w.open_initial_preset()  # the demo project: nothing blocks Start
    w.show()
    yield w
    SlowStopTrainer.may_finish.set()
    w.training_tab._worker.wait(10_000)


def test_closing_during_a_run_stops_it_without_blocking_and_closes_when_it_has_ended(window, qtbot):
    tab = window.training_tab
    finished = []
    tab.run_finished.connect(finished.append)
    assert tab.start(window.project.snapshot())
    qtbot.waitUntil(lambda: bool(SlowStopTrainer.thread), timeout=5000)
    assert SlowStopTrainer.thread[0] is tab._worker.thread_of_run()
    asked = []
    window.ask_stop_training = lambda: asked.append(True) or True

    assert not window.close()  # returns at once: the run is saving in its thread
    assert asked and SlowStopTrainer.saving.wait(5)
    assert window.isVisible() and tab.is_running() and "closes when the LoRA is saved" in \
        window.statusBar().currentMessage()
    assert not window.close() and len(asked) == 1  # a second close while saving asks nothing more

    SlowStopTrainer.may_finish.set()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=5000)
    assert [r.reason for r in finished] == ["stopped"]
    assert not tab._worker.is_running() and tab._worker.thread_of_run() is None


def test_declining_to_stop_keeps_the_run_and_the_window(window, qtbot):
    tab = window.training_tab
    assert tab.start(window.project.snapshot())
    qtbot.waitUntil(lambda: bool(SlowStopTrainer.thread), timeout=5000)
    window.ask_stop_training = lambda: False
    assert not window.close()
    assert window.isVisible() and tab.is_running() and not SlowStopTrainer.saving.is_set()
    tab.stop()
    SlowStopTrainer.may_finish.set()
    qtbot.waitUntil(lambda: not tab.is_running(), timeout=5000)
    assert window.isVisible()  # it ran to its end; nobody asked to close
