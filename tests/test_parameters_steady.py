"""The Parameters form does not move under the pointer: the problem list and a field's
message appear and go without shifting or resizing any field (offscreen)."""

import pytest
from PySide6.QtCore import QPoint
from PySide6.QtWidgets import QApplication, QLineEdit, QWidget

from core.config.presets import find_preset, load_preset
from gui.parameters_tab import ParametersTab
from gui.project import Project


@pytest.fixture
def tab(qtbot):
    project = Project()
    project.load(load_preset(find_preset("demo")), builtin=True)
    tab = ParametersTab(project)
    qtbot.addWidget(tab)
    tab.resize(1100, 800)
    tab.show()
    qtbot.waitExposed(tab)
    tab.advanced.setChecked(True)  # every field in view whatever the problems
    tab.validate_now()
    return tab


def _places(tab) -> dict[str, tuple]:
    QApplication.processEvents()
    places = {}
    for path, row in tab.binding.rows.items():
        if row.editor.isVisible():
            frame = row.editor.frame
            places[path] = (frame.mapTo(tab, QPoint(0, 0)), frame.size(), row.label.mapTo(tab, QPoint(0, 0)))
    return places


def test_no_field_moves_when_problems_appear_and_go(tab):
    assert tab.problems() == []
    before = _places(tab)
    tab.project.set_value("schedule.warmup_steps", 10)
    tab.project.set_value("schedule.warmup_ratio", 0.1)  # both set: an error on warmup steps
    edit = tab.editor("optimizer.learning_rate").findChild(QLineEdit)
    edit.setText("fast")  # refused text: an error with its message at the field
    edit.editingFinished.emit()
    tab.validate_now()
    assert tab.findChild(QWidget, "problemSummary").isVisible()
    assert tab.editor("optimizer.learning_rate").message.isVisible()
    assert tab.editor("schedule.warmup_steps").message.isVisible()
    during = _places(tab)
    assert during == before
    tab.project.set_value("schedule.warmup_ratio", 0.0)
    edit.setText("0.001")
    edit.editingFinished.emit()
    tab.validate_now()
    assert tab.problems() == []
    assert _places(tab) == before


def test_a_long_message_stays_on_one_line_beside_the_field_and_whole_on_hover(tab):
    editor = tab.editor("network.dim")
    height = editor.height()
    editor.set_mark("#c00", "a very long explanation " * 30)
    QApplication.processEvents()
    assert editor.height() == height
    assert editor.message.toolTip().startswith("a very long explanation")
    assert editor.message.geometry().top() < editor.frame.geometry().bottom()  # beside, not below
