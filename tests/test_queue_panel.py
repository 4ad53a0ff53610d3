"""The queue in the Training tab: adding the project, reordering, removing and clearing (each
saved and reloaded), and running queued tiny runs one after another through the tab's worker."""

from pathlib import Path

import pytest

from core.studies.run_queue import RunQueue
from core.training.events import Finished
from gui.project import Project
from gui.training_tab import TrainingTab
from tests.engine_fixtures import tiny_config

RUN_TIMEOUT_MS = 120_000


@pytest.fixture
def queue_file(tmp_path):
    return tmp_path / "queue.json"


@pytest.fixture
def tab(qtbot, tmp_path, queue_file):
    project = Project()
    project.config = tiny_config(tmp_path, steps=3)
    tab = TrainingTab(project, queue=RunQueue.load(queue_file))
    tab.resize(1200, 800)
    qtbot.addWidget(tab)
    tab.errors, tab.messages = [], []
    messages = tab.messages  # closures over the list, not the tab: no reference cycle
    tab.show_error = tab.errors.append
    tab.show_message = lambda title, text: messages.append((title, text))
    tab.queue_panel.ask_label = lambda default: f"asked:{default}"
    yield tab
    tab.queue_panel.finish_after_current()
    tab.request_stop_and_wait(RUN_TIMEOUT_MS)


def labels(queue):
    return [item.label for item in queue.items]


def shown(tab):
    table = tab.queue_panel.table
    return [(table.item(r, 1).text(), table.item(r, 2).text()) for r in range(table.rowCount())]


def test_add_to_queue_keeps_a_snapshot_under_the_label_asked_for(tab, queue_file):
    tab.queue_button.click()
    item = tab.queue.items[0]
    assert item.label == "asked:tiny" and item.status == "pending"
    tab.project.config.network.dim = 32  # a later edit does not reach the queued run
    reloaded = RunQueue.load(queue_file)
    assert reloaded.config_of(reloaded.items[0]).network.dim == 4
    assert shown(tab) == [("asked:tiny", "pending")] and "queued “asked:tiny”" in tab.log.toPlainText()
    tab.queue_panel.ask_label = lambda default: None  # the person cancelled
    tab.queue_button.click()
    assert len(RunQueue.load(queue_file).items) == 1


def test_a_configuration_with_errors_cannot_be_queued(tab):
    tab.set_start_blocked(["network.dim: below the minimum 1"])
    assert not tab.queue_button.isEnabled()
    assert "network.dim: below the minimum 1" in tab.queue_button.toolTip()
    tab.set_start_blocked([])
    assert tab.queue_button.isEnabled()


def test_move_remove_and_clear_are_saved_and_reloaded(tab, queue_file):
    panel = tab.queue_panel
    for label in ("a", "b", "c"):
        panel.add_project(tab.project, label)
    panel.select(tab.queue.items[2].id)
    assert panel.up_button.isEnabled() and not panel.down_button.isEnabled()
    panel.up_button.click()
    assert labels(RunQueue.load(queue_file)) == ["a", "c", "b"] and panel.selected_id() == tab.queue.items[1].id
    panel.select(tab.queue.items[0].id)
    assert not panel.up_button.isEnabled()
    panel.down_button.click()
    assert labels(RunQueue.load(queue_file)) == ["c", "a", "b"]
    panel.select(tab.queue.items[2].id)
    panel.remove_button.click()
    assert labels(RunQueue.load(queue_file)) == ["c", "a"] and [s[0] for s in shown(tab)] == ["c", "a"]
    tab.queue.mark(tab.queue.items[0].id, "completed")
    panel.refresh()
    assert panel.clear_button.isEnabled()
    panel.clear_button.click()
    assert labels(RunQueue.load(queue_file)) == ["a"] and shown(tab) == [("a", "pending")]


def test_run_queue_says_why_when_there_is_nothing_to_run(tab):
    assert not tab.queue_panel.run_button.isEnabled()
    assert not tab.queue_panel.run()
    assert tab.messages and "Nothing is waiting" in tab.messages[0][1]


def test_an_item_whose_settings_no_longer_hold_fails_and_the_queue_goes_on(qtbot, tab, tmp_path):
    broken = tiny_config(tmp_path / "gone", steps=3)
    tab.queue.add(broken, "gone")
    import shutil

    shutil.rmtree(tmp_path / "gone" / "data")  # its dataset disappeared after queueing
    with qtbot.waitSignal(tab.queue_panel.queue_finished, timeout=RUN_TIMEOUT_MS):
        tab.queue_panel.run()
    item = tab.queue.items[0]
    assert item.status == "failed" and "image_dir" in item.message
    assert "“gone” cannot start" in tab.log.toPlainText()
    assert tab.messages and tab.messages[-1][0] == "Queued runs failed" and "gone" in tab.messages[-1][1]


def test_the_app_and_lorakiln_queue_fail_items_that_cannot_start_alike_and_train_none(qtbot, tab, tmp_path,
                                                                                     queue_file, capsys, monkeypatch):
    import json
    import shutil

    from core.cli.main import main
    from core.training import engine

    def no_training(*args, **kwargs):
        raise AssertionError("an item that cannot start was handed to the engine")

    monkeypatch.setattr(engine, "Trainer", no_training)
    tab.queue.add(tiny_config(tmp_path / "gone", steps=3), "gone")
    tab.queue.add(tab.project.snapshot(), "renamed key")
    document = json.loads(queue_file.read_text())
    document["items"][1]["config_toml"] = "[network]\ndimm = 4\n"  # written by a LoRA Kiln that had it
    queue_file.write_text(json.dumps(document))
    shutil.rmtree(tmp_path / "gone" / "data")  # its dataset disappeared after queueing
    cli_file = tmp_path / "cli-queue.json"
    cli_file.write_text(queue_file.read_text())  # the same queue, for `lorakiln queue run`
    tab.queue.reload()

    assert main(["queue", "run", "--queue-file", str(cli_file)]) == 1
    with qtbot.waitSignal(tab.queue_panel.queue_finished, timeout=RUN_TIMEOUT_MS):
        tab.queue_panel.run()

    by_app, by_cli = RunQueue.load(queue_file).items, RunQueue.load(cli_file).items
    assert [(i.status, i.message, i.run_dir) for i in by_app] == [(i.status, i.message, i.run_dir) for i in by_cli]
    assert [i.status for i in by_app] == ["failed", "failed"] and not tab.is_running()
    assert "dataset.subsets[0].image_dir" in by_app[0].message and "network.dimm: unknown key" in by_app[1].message
    printed, logged = capsys.readouterr().err, tab.log.toPlainText()
    for item in by_app:
        assert f"queue: “{item.label}” cannot start: {item.message}" in printed
        assert f"queue: “{item.label}” cannot start: {item.message}" in logged


@pytest.mark.slow
def test_a_queue_of_two_tiny_runs_trains_both_in_order(qtbot, tab, tmp_path, queue_file):
    panel = tab.queue_panel
    panel.add_project(tab.project, "three steps")
    tab.project.config.training.max_train_steps = 4
    panel.add_project(tab.project, "four steps")
    started, finished = [], []
    panel.item_started.connect(lambda item: started.append(item.label))
    tab.run_finished.connect(finished.append)
    with qtbot.waitSignal(panel.queue_finished, timeout=RUN_TIMEOUT_MS):
        panel.run_button.click()
        assert panel.running and panel.run_button.text() == "Finish after this run" and not tab.start_button.isEnabled()
    assert started == ["three steps", "four steps"]
    assert [r.steps for r in finished] == [3, 4] and all(isinstance(r, Finished) for r in finished)
    saved = RunQueue.load(queue_file).items
    assert [i.status for i in saved] == ["completed", "completed"]
    assert [i.run_dir for i in saved] == [r.run_dir for r in finished] and finished[0].run_dir != finished[1].run_dir
    assert len(tab.plots.loss.series("raw")) == 4  # the live plots follow the current queued run
    assert tab.errors == [] and tab.messages == [] and tab.start_button.isEnabled()
    assert "queue: ended (every item has run): 2 items ran" in tab.log.toPlainText()


@pytest.mark.slow
def test_a_failed_run_is_logged_and_the_queue_goes_on(qtbot, tab, monkeypatch):
    from core.training.step import StepComputer

    real_loss, calls = StepComputer.loss, []

    def loss_failing_in_the_first_run(self, batch):
        calls.append(self)
        if calls[0] is self:  # every step of the first run's computer fails; later runs train
            raise RuntimeError("boom in the first queued run")
        return real_loss(self, batch)

    monkeypatch.setattr(StepComputer, "loss", loss_failing_in_the_first_run)
    tab.queue.add(tab.project.snapshot(), "fails")
    tab.queue.add(tab.project.snapshot(), "fine")
    with qtbot.waitSignal(tab.queue_panel.queue_finished, timeout=RUN_TIMEOUT_MS):
        tab.queue_panel.run()
    first, second = tab.queue.items
    assert (first.status, second.status) == ("failed", "completed")
    assert "boom in the first queued run" in first.message and first.run_dir
    assert f"queue: “fails” failed: {first.message}" in tab.log.toPlainText()
    assert tab.errors == []  # no dialog per queued failure; one summary at the end
    assert tab.messages[-1][0] == "Queued runs failed" and "fails: failed: " in tab.messages[-1][1]


@pytest.mark.slow
def test_stopping_a_queued_run_stops_the_queue_without_asking(qtbot, tab):
    tab.project.config.training.max_train_steps = 400
    tab.queue_panel.add_project(tab.project, "long")
    tab.queue_panel.add_project(tab.project, "next")
    tab.queue_panel.run()
    qtbot.waitUntil(lambda: len(tab.plots.loss.series("raw")) >= 1, timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(tab.queue_panel.queue_finished, timeout=RUN_TIMEOUT_MS):
        tab.stop_button.click()
    assert [i.status for i in tab.queue.items] == ["stopped", "pending"]
    assert Path(tab.queue.items[0].run_dir).is_dir() and not tab.is_running() and tab.messages == []
    assert "1 item still pending" in tab.log.toPlainText()


def test_a_broken_queue_file_is_reported_by_the_window(qtbot, tmp_path):
    from core.system.paths import user_data_dir
    from gui.main_window import DISCARD, MainWindow, settings

    settings().clear()
    path = user_data_dir() / "queue.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{ not json", encoding="utf-8")
    window = MainWindow()
    qtbot.addWidget(window)
    messages = window.messages = []
    window.show_message = lambda title, text: messages.append((title, text))
    window.ask_unsaved = lambda: DISCARD
    qtbot.waitUntil(lambda: bool(window.messages), timeout=5000)
    title, text = window.messages[0]
    assert title == "The queue could not be read" and str(path) in text and "broken" in text
    assert window.training_tab.queue.items == []
