"""File dialogs start in the person's folders (the last one used for that kind of file, else
Documents or home), never in the app's own folder or its resources."""

from pathlib import Path

import pytest
from PySide6.QtWidgets import QFileDialog

from core.config.params import param_specs
from core.config.schema import ModelParams
from core.system.paths import default_runs_dir, user_presets_dir
from core.system.resources import resource_path
from gui.dialog_folders import inside_app, remember_folder, start_folder, user_folder
from gui.form_editors import make_editor
from gui.main_window import DISCARD, MainWindow, settings
from gui.plots import LivePlot

ROOT = Path(__file__).resolve().parent.parent


class Dialogs:
    """Stands in for QFileDialog's static methods: records each start folder, picks ``answer``."""

    def __init__(self, monkeypatch) -> None:
        self.starts: list[str] = []
        self.answer = ""
        for name in ("getOpenFileName", "getSaveFileName", "getOpenFileNames", "getExistingDirectory"):
            monkeypatch.setattr(QFileDialog, name, staticmethod(self._fake(name)))

    def _fake(self, name):
        def dialog(parent, caption="", directory="", *rest, **kwargs):
            self.starts.append(directory)
            if name == "getExistingDirectory":
                return self.answer
            if name == "getOpenFileNames":
                return ([self.answer] if self.answer else []), ""
            return self.answer, ""
        return dialog

    @property
    def last(self) -> Path:
        return Path(self.starts[-1])


@pytest.fixture
def dialogs(monkeypatch):
    settings().clear()
    monkeypatch.chdir(ROOT)  # as when the app is started from its own folder
    return Dialogs(monkeypatch)


@pytest.fixture
def window(qtbot, dialogs):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show_message = lambda title, text: None
    w.ask_unsaved = lambda: DISCARD
    w.ask_stop_training = lambda: True
    return w


def _folder_of(start: Path) -> Path:
    return start if start.is_dir() or not start.suffix else start.parent


def test_the_apps_folders_are_recognised():
    assert inside_app(ROOT) and inside_app(resource_path("demo", "dataset")) and inside_app(resource_path())
    assert not inside_app(Path.home()) and not inside_app(default_runs_dir())


def test_import_and_inspect_start_in_the_users_folders(window, dialogs):
    window._on_import_triggered()
    assert dialogs.last == user_folder()
    window._on_inspect_triggered()
    assert dialogs.last == default_runs_dir() if default_runs_dir().is_dir() else dialogs.last == user_folder()
    assert not any(inside_app(s) for s in dialogs.starts) and all(Path(s).is_absolute() for s in dialogs.starts)


def test_presets_open_and_save_in_the_users_presets(window, dialogs):
    window.open_initial_preset()  # the demo: a built-in preset inside the app
    window.save_as()
    assert dialogs.last == user_presets_dir() / "demo.toml"
    window._on_open_triggered()
    assert dialogs.last == user_presets_dir()


def test_the_last_folder_used_is_remembered_per_kind(window, dialogs, tmp_path):
    config = tmp_path / "kohya" / "config.toml"
    config.parent.mkdir()
    config.write_text("learning_rate = 1e-4\n")
    dialogs.answer = str(config)
    window._on_import_triggered()
    dialogs.answer = ""
    window._on_import_triggered()
    assert dialogs.last == config.parent
    window._on_inspect_triggered()
    assert dialogs.last != config.parent  # another kind of file keeps its own folder


def test_a_remembered_folder_inside_the_app_is_never_used(dialogs):
    settings().setValue("dialogs/last_folder/plot", str(resource_path("demo")))
    assert start_folder("plot") == user_folder()
    remember_folder("plot", resource_path("demo", "prompts.txt"))
    assert settings().value("dialogs/last_folder/plot") == str(resource_path("demo"))  # unchanged
    assert start_folder("plot", ROOT) == user_folder()  # nor an app folder offered as the default


def test_plot_exports_start_in_the_users_folder_not_the_working_directory(qtbot, dialogs):
    plot = LivePlot("Loss", "step", "loss")
    qtbot.addWidget(plot)
    plot._on_png_button_clicked()
    plot._on_csv_button_clicked()
    assert [Path(s) for s in dialogs.starts] == [user_folder() / "loss.png", user_folder() / "loss.csv"]


def test_a_path_field_that_is_empty_or_builtin_browses_from_the_users_folder(qtbot, dialogs, tmp_path):
    spec = next(s for s in param_specs(ModelParams) if s.name == "base_model")
    editor = make_editor(spec, "model.base_model")
    qtbot.addWidget(editor)
    editor._browse("file")
    assert dialogs.last == user_folder()
    editor.edit.setText(str(resource_path("presets", "demo.toml")))
    editor._browse("file")
    assert dialogs.last == user_folder()
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"")
    editor.edit.setText(str(model))
    editor._browse("file")
    assert dialogs.last == tmp_path  # a real file of the person's: its own folder


def test_adding_an_image_folder_to_the_demo_starts_in_the_users_folder(window, dialogs):
    window.open_initial_preset()
    window.dataset_tab.subsets._on_add_button_clicked()
    assert dialogs.last == user_folder()
