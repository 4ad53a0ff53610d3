"""Resolution and batch size are edited on the Dataset tab too, next to the bucket plan they
change: the same config values as the Parameters tab, each tab following the other (offscreen)."""

import pytest
from PySide6.QtWidgets import QWidget

from core.config.presets import find_preset, load_preset
from gui.dataset_tab import DatasetTab
from gui.parameters_tab import ParametersTab
from gui.project import Project

WAIT_MS = 15000


@pytest.fixture
def tabs(qtbot):
    project = Project()
    dataset, parameters = DatasetTab(project), ParametersTab(project)
    for tab in (dataset, parameters):
        qtbot.addWidget(tab)
        tab.resize(1200, 800)
        tab.show()
    project.load(load_preset(find_preset("demo")), builtin=True)
    qtbot.waitUntil(lambda: dataset.plan is not None and not dataset.scanner.running, timeout=WAIT_MS)
    yield dataset, parameters
    dataset.shutdown()


def _plan_editor(dataset, path):
    return dataset.findChild(QWidget, f"plan:{path}")


def test_the_plan_inputs_sit_beside_the_plan_and_show_the_config(tabs):
    dataset, _ = tabs
    resolution, batch = _plan_editor(dataset, "dataset.resolution"), _plan_editor(dataset, "training.batch_size")
    assert resolution.isVisible() and batch.isVisible()
    assert resolution.value() == dataset.project.config.dataset.resolution == (256, 256)
    assert batch.value() == dataset.project.config.training.batch_size
    assert resolution.parentWidget().parentWidget() is dataset.plan_view.parentWidget()


def test_editing_on_the_dataset_tab_changes_the_config_the_plan_and_the_parameters_tab(tabs):
    dataset, parameters = tabs
    _plan_editor(dataset, "dataset.resolution").parts[0].setValue(512)
    _plan_editor(dataset, "dataset.resolution").parts[1].setValue(384)
    _plan_editor(dataset, "training.batch_size").box.setValue(3)
    assert dataset.project.config.dataset.resolution == (512, 384)
    assert dataset.project.config.training.batch_size == 3
    assert dataset.plan.settings.resolution == (512, 384) and dataset.plan.batch_size == 3
    assert parameters.editor("dataset.resolution").value() == (512, 384)
    assert parameters.editor("training.batch_size").value() == 3


def test_editing_on_the_parameters_tab_shows_on_the_dataset_tab_and_replans(tabs):
    dataset, parameters = tabs
    parameters.editor("dataset.resolution").parts[0].setValue(320)
    parameters.editor("training.batch_size").box.setValue(2)
    assert _plan_editor(dataset, "dataset.resolution").value() == (320, 256)
    assert _plan_editor(dataset, "training.batch_size").value() == 2
    assert dataset.plan.settings.resolution == (320, 256) and dataset.plan.batch_size == 2
