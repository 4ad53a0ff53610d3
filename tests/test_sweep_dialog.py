"""The Sweep dialog: every schema field offered with its current value, problems shown inline
as they are typed, one queued item per value; and the end of a sweep comparing exactly its runs."""

import json

import pytest

from core.studies.run_queue import RunQueue
from gui.project import Project
from gui.sweep_dialog import SweepDialog, sweepable_fields
from tests.engine_fixtures import tiny_config

RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def project(tmp_path):
    project = Project()
    project.config = tiny_config(tmp_path, steps=2)
    return project


@pytest.fixture
def queue(tmp_path):
    return RunQueue.load(tmp_path / "queue.json")


@pytest.fixture
def dialog(qtbot, project, queue):
    dialog = SweepDialog(project, queue)
    qtbot.addWidget(dialog)
    return dialog


def test_every_schema_field_is_offered_but_the_run_names(dialog):
    fields = [dialog.field_combo.itemText(i) for i in range(dialog.field_combo.count())]
    assert "dataset.resolution" in fields and "optimizer.learning_rate" in fields
    assert "dataset.subsets[0].num_repeats" in fields  # the project has one subset
    assert "output.output_name" not in fields and "output.output_dir" not in fields
    assert len(fields) == len(sweepable_fields(1)) > 60


def test_the_current_value_is_shown_for_the_chosen_field(dialog):
    assert dialog.field() == "dataset.resolution"
    assert "now [64, 64]" in dialog.current_label.text()
    dialog.field_combo.setCurrentText("network.dim")
    assert "now 4" in dialog.current_label.text()
    dialog.field_combo.setCurrentText("optimizer.type")
    assert "one of:" in dialog.current_label.text() and "AdamW" in dialog.current_label.text()
    dialog.field_combo.setCurrentText("network.dimm")
    assert "Not a parameter" in dialog.current_label.text()


@pytest.mark.parametrize("field, values, expected", [
    ("network.dimm", "2,4", "unknown field; did you mean 'dim'?"),
    ("network.dim", "4", "a sweep needs at least two values, got 1"),
    ("network.dim", "2,2", "the value 2 is given twice"),
    ("network.dim", "2,,4", "empty value"),
    ("network.dim", "2,-1", "-1: network.dim:"),
    ("network.dim", "2, 2.0", "means the same as 2"),
    ("network.dim", "", "Type the values"),
])
def test_problems_are_shown_inline_and_nothing_can_be_queued(dialog, queue, field, values, expected):
    dialog.set_sweep(field, values)
    assert expected in dialog.error_label.text(), dialog.error_label.text()
    assert not dialog.error_label.isHidden() and not dialog.queue_button.isEnabled()
    assert dialog.queue_sweep() is None and queue.items == []


def test_a_valid_sweep_previews_its_runs_and_queues_one_item_per_value(qtbot, dialog, queue, tmp_path):
    dialog.set_sweep("network.dim", "2, 8")
    assert dialog.error_label.isHidden() and dialog.queue_button.isEnabled()
    assert dialog.preview_label.text() == "Queues 2 runs: tiny_dim-2, tiny_dim-8"
    with qtbot.waitSignal(dialog.sweep_queued) as queued:
        sweep_id = dialog.queue_sweep()
    assert queued.args == [sweep_id, True]
    saved = RunQueue.load(tmp_path / "queue.json")
    assert [i.label for i in saved.items] == ["network.dim=2", "network.dim=8"]
    assert {i.sweep_id for i in saved.items} == {sweep_id}
    assert [saved.config_of(i).network.dim for i in saved.items] == [2, 8]


def test_the_end_of_a_sweep_shows_exactly_its_runs_in_the_runs_tab(qtbot, tmp_path):
    from gui.main_window import DISCARD, MainWindow, settings
    from tests.test_runs_tab import make_run

    settings().clear()
    window = MainWindow()
    qtbot.addWidget(window)
    messages = window.messages = []
    window.show_message = lambda title, text: messages.append((title, text))
    window.ask_unsaved = lambda: DISCARD
    root = tmp_path / "runs"
    runs = [str(make_run(root, f"2025010{i}-000000-kiln_{r}", r, started=1.7e9 + i)) for i, r in
            enumerate((256, 384, 512))]
    with qtbot.waitSignal(window.runs_tab.compare.drawn, timeout=RUN_TIMEOUT_MS):
        window.training_tab.queue_panel.sweep_finished.emit("sweep1", runs[:2])
    assert window.tabs.currentWidget() is window.runs_tab
    assert sorted(window.runs_tab.run_list.selected_paths()) == runs[:2]
    assert sorted(window.runs_tab.compare.labels) == ["resolution=256", "resolution=384"]


@pytest.mark.slow
def test_a_queued_sweep_runs_and_ends_comparing_its_runs(qtbot, tmp_path):
    from gui.main_window import DISCARD, MainWindow, settings

    settings().clear()
    window = MainWindow()
    qtbot.addWidget(window)
    messages = window.messages = []
    window.show_message = lambda title, text: messages.append((title, text))
    window.ask_unsaved = lambda: DISCARD
    window.ask_stop_training = lambda: True
    window.training_tab.use_queue(RunQueue.load(tmp_path / "queue.json"))
    window.project.config = tiny_config(tmp_path, steps=2)
    dialog = window.training_tab.queue_panel.open_sweep_dialog(window.project)
    dialog.set_sweep("network.dim", "2,4")
    with qtbot.waitSignal(window.training_tab.queue_panel.sweep_finished, timeout=RUN_TIMEOUT_MS) as ended:
        dialog.queue_sweep()  # "Run the queue now" is ticked
    run_dirs = ended.args[1]
    qtbot.waitUntil(lambda: sorted(window.runs_tab.run_list.selected_paths()) == sorted(run_dirs),
                    timeout=RUN_TIMEOUT_MS)
    assert window.tabs.currentWidget() is window.runs_tab and len(run_dirs) == 2
    qtbot.waitUntil(lambda: sorted(window.runs_tab.compare.labels) == ["dim=2", "dim=4"], timeout=RUN_TIMEOUT_MS)
    record = window.training_tab.queue.sweep_record_path(ended.args[0])
    assert record is not None and sorted(json.loads(record.read_text())["run_dirs"]) == sorted(run_dirs)
    assert window.messages == []
