"""One run's actions (the Runs tab's context menu, the Training tab's Resume run, Help > Open
log folder): each does what its name says to that run, and each failure is said to the person,
naming the folder or file."""

from pathlib import Path

import pytest
from PySide6.QtGui import QGuiApplication

import gui.folders as folders
from core.config.presets import save_preset
from core.config.schema import TrainConfig
from core.studies.run_index import RunRecord
from core.training.events import Finished
from gui import run_actions
from gui.main_window import DISCARD, MainWindow, settings
from gui.project import Project
from gui.runs_tab import RunsTab


def make_run(root: Path, name: str, status: str = "stopped", state: bool = True, lora: bool = True) -> RunRecord:
    run = root / name
    (run / "state").mkdir(parents=True)
    config = TrainConfig()
    config.output.output_name = name
    config.network.dim = 12
    save_preset(config, run / "config.toml")
    if state:
        (run / "state" / "step-00000004.safetensors").write_bytes(b"x")
    lora_path = run / f"{name}.safetensors" if lora else None
    if lora_path:
        lora_path.write_bytes(b"lora")
    return RunRecord(path=run, name=name, folder=str(root), status=status, lora_path=lora_path)


@pytest.fixture
def opened(monkeypatch):
    urls = []
    monkeypatch.setattr(folders, "open_url", lambda url: urls.append(url.toLocalFile()) or True)
    return urls


@pytest.fixture
def tab(qtbot, tmp_path):
    project = Project()
    project.config.output.output_dir = str(tmp_path / "runs")
    tab = RunsTab(project)
    qtbot.addWidget(tab)
    messages = tab.messages = []
    tab.show_message = lambda title, text: messages.append((title, text))
    return tab


def menu_texts(tab, record):  # noqa: ANN001, ANN201
    return {a.text(): a for a in tab.run_menu(record).actions() if a.text()}


def test_the_menu_offers_every_action_and_disables_what_does_not_apply(tab, tmp_path):
    stopped = make_run(tmp_path, "stopped")
    assert list(menu_texts(tab, stopped)) == ["Open folder", "Open LoRA's folder", "Resume",
                                              "Train again with these settings", "Copy the lorakiln train command",
                                              "Export Kohya config…", "Delete…"]
    assert all(a.isEnabled() for a in menu_texts(tab, stopped).values())
    done = make_run(tmp_path, "done", status="completed", lora=False)
    actions = menu_texts(tab, done)
    assert not actions["Resume"].isEnabled() and "the run is completed" in actions["Resume"].toolTip()
    assert not actions["Open LoRA's folder"].isEnabled()
    no_state = make_run(tmp_path, "nostate", state=False)
    assert "saved no training state" in menu_texts(tab, no_state)["Resume"].toolTip()


def test_open_folder_and_the_loras_folder_go_through_the_desktop(tab, tmp_path, opened):
    record = make_run(tmp_path, "run")
    menu_texts(tab, record)["Open folder"].trigger()
    assert tab.open_lora_folder(record)
    assert opened == [str(record.path), str(record.path)] and tab.messages == []


def test_a_folder_that_cannot_be_opened_is_said(tab, tmp_path, monkeypatch):
    record = make_run(tmp_path, "run")
    monkeypatch.setattr(folders, "open_url", lambda url: False)
    assert not tab.open_run_folder(record)
    assert tab.messages[-1][0] == "Cannot open the run's folder" and str(record.path) in tab.messages[-1][1]
    record.path = tmp_path / "gone"
    assert not tab.open_run_folder(record)
    assert "gone does not exist" in tab.messages[-1][1]


def test_resume_and_train_again_ask_the_window_with_the_runs_folder(tab, tmp_path, qtbot):
    record = make_run(tmp_path, "run")
    with qtbot.waitSignal(tab.resume_requested) as resumed:
        menu_texts(tab, record)["Resume"].trigger()
    assert resumed.args == [str(record.path)]
    with qtbot.waitSignal(tab.train_again_requested) as again:
        menu_texts(tab, record)["Train again with these settings"].trigger()
    assert again.args == [str(record.path)]
    completed = make_run(tmp_path, "done", status="completed")
    tab.resume_run(completed)
    assert tab.messages[-1][0] == "Cannot resume" and "the run is completed" in tab.messages[-1][1]


def test_copy_the_train_command(tab, tmp_path):
    record = make_run(tmp_path, "my run")
    assert tab.copy_train_command(record) == f"lorakiln train --resume '{record.path}'"
    assert QGuiApplication.clipboard().text() == f"lorakiln train --resume '{record.path}'"
    done = make_run(tmp_path, "done", status="completed")
    assert tab.copy_train_command(done) == f"lorakiln train {done.path / 'config.toml'}"


def test_export_kohya_config_writes_the_runs_settings(tab, tmp_path):
    record = make_run(tmp_path, "run")
    out = tmp_path / "export"
    out.mkdir()
    tab.ask_export_folder = lambda title: str(out)
    written = tab.export_kohya(record)
    assert [p.name for p in written] == ["config.toml", "dataset.toml"] and all(p.parent == out for p in written)
    assert "network_dim = 12" in written[0].read_text(encoding="utf-8")
    (record.path / "config.toml").write_text("[network\nbroken", encoding="utf-8")
    assert tab.export_kohya(record) == []
    assert tab.messages[-1][0] == "Cannot export" and str(record.path / "config.toml") in tab.messages[-1][1]


def test_delete_moves_to_the_trash_or_asks_before_deleting_for_good(tab, tmp_path, monkeypatch):
    trashed = make_run(tmp_path, "a")
    monkeypatch.setattr(run_actions, "move_to_trash", lambda path: True)
    tab.ask_yes = lambda title, text: True
    assert tab.delete_run(trashed)
    no_trash = make_run(tmp_path, "b")
    monkeypatch.setattr(run_actions, "move_to_trash", lambda path: False)
    questions = []
    tab.ask_yes = lambda title, text: questions.append(text) or len(questions) < 2
    assert not tab.delete_run(no_trash) and no_trash.path.is_dir()  # declined the permanent delete
    assert "cannot be moved to the trash" in questions[-1]
    tab.ask_yes = lambda title, text: True
    assert tab.delete_run(no_trash) and not no_trash.path.exists()


@pytest.fixture
def window(qtbot):
    settings().clear()
    w = MainWindow()
    qtbot.addWidget(w)
    w.messages = []
    w.show_message = lambda title, text: w.messages.append((title, text))
    w.ask_unsaved = lambda: DISCARD
    w.ask_stop_training = lambda: True
    return w


def test_train_again_loads_the_runs_settings_as_an_unsaved_copy(window, tmp_path):
    record = make_run(tmp_path, "run")
    window.runs_tab.train_again(record)
    assert window.project.config.network.dim == 12 and window.project.builtin
    assert window.tabs.currentWidget() is window.parameters_tab


def test_resume_from_the_runs_tab_starts_the_run_folder_again(window, tmp_path, monkeypatch):
    record = make_run(tmp_path, "run")
    started = []
    monkeypatch.setattr(window.training_tab, "_start_run",
                        lambda config, description, base_dir, resume_from, line: started.append(
                            (config.output.output_name, resume_from)))
    window.runs_tab.resume_run(record)
    assert started == [("run", record.path)] and window.tabs.currentWidget() is window.training_tab


def test_the_training_tab_offers_resume_run_after_a_stop(window, tmp_path, monkeypatch):
    tab = window.training_tab
    record = make_run(tmp_path, "run")
    assert tab.resume_run_button.isHidden()
    tab.run_dir = str(record.path)
    tab._on_worker_finished(Finished("stopped", "", None, 4, 1, 1.0))
    assert not tab.resume_run_button.isHidden()
    started = []
    monkeypatch.setattr(tab, "_start_run", lambda *args: started.append(args[3]))
    tab.resume_run_button.click()
    assert started == [record.path]
    tab.last_result = Finished("completed", "", None, 4, 1, 1.0)
    tab._update_buttons()
    assert tab.resume_run_button.isHidden()


def test_help_open_log_folder_opens_it_or_says_why(window, tmp_path, monkeypatch, opened):
    import gui.main_window as main_window

    monkeypatch.setattr(main_window, "log_dir", lambda: tmp_path / "logs")
    assert window.open_log_folder() and opened == [str(tmp_path / "logs")]
    (tmp_path / "file").write_text("x", encoding="utf-8")
    monkeypatch.setattr(main_window, "log_dir", lambda: tmp_path / "file" / "logs")
    assert not window.open_log_folder()
    assert window.messages[-1][0] == "Cannot open the log folder" and "file/logs" in window.messages[-1][1]
