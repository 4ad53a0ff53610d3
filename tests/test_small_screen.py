"""Every window and dialog fits a 1280x720 screen (less its task bar) and keeps its controls
in view; a remembered geometry from a larger screen is pulled back onto a small one
(offscreen, with the screen's available area standing for a 1280x720 desktop)."""

import pytest
from PySide6.QtCore import QPoint, QRect, QSize
from PySide6.QtWidgets import QWidget

from gui import screen
from gui.main_window import DISCARD, MainWindow, settings

SMALL = QRect(0, 0, 1280, 720 - 40)  # a 1280x720 screen with a 40-pixel task bar


@pytest.fixture(autouse=True)
def small_screen(monkeypatch):
    monkeypatch.setattr(screen, "available_geometry", lambda widget=None: QRect(SMALL))


def _inside(outer: QRect, inner: QRect) -> bool:
    return outer.contains(inner.topLeft()) and outer.contains(inner.bottomRight())


def _in_view(widget: QWidget, window: QWidget) -> bool:
    """Shown, and wholly inside the window's client area."""
    rect = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    return widget.isVisible() and widget.width() > 0 and widget.height() > 0 and _inside(window.rect(), rect)


def _fits(window: QWidget) -> bool:
    return _inside(SMALL, window.frameGeometry()) and window.frameGeometry().height() <= SMALL.height() \
        and window.minimumSizeHint().boundedTo(SMALL.size()) == window.minimumSizeHint()


@pytest.fixture
def window(qtbot):
    settings().clear()
    w = MainWindow()
    qtbot.addWidget(w)
    w.show_message = lambda title, text: None
    w.ask_unsaved = lambda: DISCARD
    w.ask_stop_training = lambda: True
    yield w
    w.dataset_tab.shutdown()


def test_the_first_window_fits_the_screen_with_its_controls_in_view(qtbot, window):
    window.open_initial_preset()
    window.show()
    qtbot.waitExposed(window)
    assert _fits(window), window.frameGeometry()
    assert _in_view(window.statusBar(), window)
    dataset = window.dataset_tab
    for widget in (dataset.plan_view.warnings, dataset.caption_editor, dataset.caption_editor.save_button,
                   dataset.thumbnails):
        assert _in_view(widget, window), widget
    for tab, widgets in ((window.parameters_tab, [window.parameters_tab.advanced]),
                         (window.training_tab, [window.training_tab.start_button]),
                         (window.runs_tab, [window.runs_tab.compare.table, window.runs_tab.run_list])):
        window.tabs.setCurrentWidget(tab)
        qtbot.wait(10)
        for widget in widgets:
            assert _in_view(widget, window), widget


def test_a_remembered_geometry_larger_than_the_screen_is_pulled_onto_it(qtbot):
    settings().clear()
    big = MainWindow()
    qtbot.addWidget(big)
    big.ask_unsaved = lambda: DISCARD
    big.setGeometry(1500, 900, 1900, 1150)  # saved on a 2560x1440 screen, far off this one
    settings().setValue("window/geometry", big.saveGeometry())
    big.dataset_tab.shutdown()
    again = MainWindow()
    qtbot.addWidget(again)
    again.ask_unsaved = lambda: DISCARD
    again.show()
    qtbot.waitExposed(again)
    assert _fits(again), again.frameGeometry()
    again.dataset_tab.shutdown()


def test_fit_to_screen_shrinks_and_moves_a_window_back(qtbot):
    widget = QWidget()
    qtbot.addWidget(widget)
    widget.move(2000, 1000)
    screen.fit_to_screen(widget, QSize(1600, 1000))
    assert widget.width() <= SMALL.width() and widget.height() <= SMALL.height() - screen.FRAME_ALLOWANCE.height()
    assert _inside(SMALL, widget.frameGeometry())


def _dialog_fits(qtbot, dialog, buttons) -> None:
    qtbot.addWidget(dialog)
    dialog.show()
    qtbot.waitExposed(dialog)
    # Where a dialog opens Qt decides from the real screen (centred on it or its parent), so
    # what is checked here is that it is small enough to stand wholly on the small one.
    frame = dialog.frameGeometry().size()
    assert frame.boundedTo(SMALL.size()) == frame, (type(dialog).__name__, frame)
    assert dialog.minimumSizeHint().boundedTo(SMALL.size()) == dialog.minimumSizeHint()
    for button in buttons:
        assert _in_view(button, dialog), button.text()


def test_the_make_grid_dialog_fits(qtbot, tmp_path):
    from core.studies.run_index import load_run
    from gui.grid_dialog import GridDialog
    from tests.test_grid_dialog import fake_runs

    runs = fake_runs.__wrapped__(tmp_path)
    dialog = GridDialog([load_run(d) for d in runs])
    _dialog_fits(qtbot, dialog, [dialog.generate_button, dialog.close_button])
    dialog.cancel()


def test_the_sweep_dialog_fits(qtbot, tmp_path):
    from core.studies.run_queue import RunQueue
    from gui.project import Project
    from gui.sweep_dialog import SweepDialog

    dialog = SweepDialog(Project(), RunQueue.load(tmp_path / "queue.json"))
    _dialog_fits(qtbot, dialog, [])


def test_the_inspect_dialog_fits(qtbot, tmp_path):
    from gui.inspect_dialog import InspectDialog

    dialog = InspectDialog(str(tmp_path / "missing.safetensors"))
    _dialog_fits(qtbot, dialog, [])


def test_the_error_dialog_fits_with_a_long_traceback_shown(qtbot):
    from core.training.events import Failed
    from gui.error_dialog import ErrorDialog

    trace = "\n".join(f'  File "engine.py", line {i}, in step' for i in range(400))
    advice = tuple(f"Try option {i}: lower the batch size, the resolution or the rank." for i in range(12))
    dialog = ErrorDialog(Failed("oom", "Out of memory.", advice, trace, "/r/log.txt", "/r", None))
    dialog.details_button.setChecked(True)
    _dialog_fits(qtbot, dialog, [dialog.details_button, dialog.copy_button])


def test_a_long_import_report_does_not_outgrow_the_screen(qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    shown = []
    monkeypatch.setattr(QMessageBox, "exec", lambda box: shown.append((box.text(), box.detailedText())))
    report = "\n".join(f"  key_{i} = 1: not supported" for i in range(60))
    screen.show_long_message(None, "Kohya config imported", report)
    text, details = shown[0]
    assert len(text.splitlines()) <= screen.MESSAGE_LINES + 1 and details == report
