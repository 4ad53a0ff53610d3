"""The main window: tabs over one project, presets, unsaved work, remembered state."""

import subprocess
import sys
from pathlib import Path

import pytest

from core.config.presets import find_preset, load_preset
from gui.main_window import CANCEL, DISCARD, SAVE, MainWindow, settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def window(qtbot):
    settings().clear()
    w = MainWindow()
    qtbot.addWidget(w)
    w.messages = []
    w.show_message = lambda title, text: w.messages.append((title, text))
    # Teardown closes the window: never let a modal question wait for an answer offscreen.
    w.ask_unsaved = lambda: DISCARD
    w.ask_stop_training = lambda: True
    return w


def test_the_window_has_the_four_tabs_and_is_titled(window):
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == ["Dataset", "Parameters", "Training", "Runs"]
    assert window.windowTitle().endswith("LoRA Kiln")


def test_first_launch_opens_the_demo_project(window):
    window.open_initial_preset()
    assert window.project.name == "demo" and window.project.builtin
    assert window.windowTitle() == "demo — LoRA Kiln"


def test_the_status_bar_names_a_built_in_preset_and_shows_the_path_of_ones_own(window, tmp_path):
    window.open_initial_preset()
    assert window.statusBar().currentMessage() == "Opened the built-in preset “demo”"
    preset = tmp_path / "mine.toml"
    preset.write_text("[network]\ndim = 12\n", encoding="utf-8")
    assert window.open_preset(str(preset))
    assert window.statusBar().currentMessage() == f"Opened {preset}"


def test_the_last_preset_is_reopened(window, qtbot, tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text("[network]\ndim = 12\n", encoding="utf-8")
    assert window.open_preset(str(preset))
    again = MainWindow()
    again.ask_unsaved = lambda: DISCARD
    qtbot.addWidget(again)
    again.open_initial_preset()
    assert again.project.path == preset and again.project.config.network.dim == 12
    assert str(preset.resolve()) in (settings().value("project/recent") or [])


def test_a_broken_preset_is_shown_and_nothing_changes(window, tmp_path):
    window.open_initial_preset()
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\ndimm = 3\n", encoding="utf-8")
    assert not window.open_preset(str(bad))
    assert "network.dimm: unknown key; did you mean 'dim'?" in window.messages[0][1]
    assert window.project.name == "demo"


def test_unsaved_changes_are_asked_about_before_opening_another(window, tmp_path):
    window.open_initial_preset()
    window.project.set_value("network.dim", 16)
    assert window.windowTitle() == "demo* — LoRA Kiln"
    window.ask_unsaved = lambda: CANCEL
    assert not window.open_preset(str(find_preset("sd15-prodigy")))
    assert window.project.name == "demo" and window.project.config.network.dim == 16
    window.ask_unsaved = lambda: DISCARD
    assert window.open_preset(str(find_preset("sd15-prodigy")))
    assert window.project.name == "sd15-prodigy"


def test_saving_a_builtin_preset_asks_for_a_new_file(window, tmp_path):
    window.open_initial_preset()
    window.project.set_value("network.dim", 16)
    target = tmp_path / "copy.toml"
    window.save_as = lambda path=None: MainWindow.save_as(window, str(target))
    assert window.save()
    assert load_preset(target).config.network.dim == 16 and not window.project.dirty
    assert load_preset(find_preset("demo")).config.network.dim == 4  # the shipped preset is untouched


def test_save_on_quit_when_asked(window, tmp_path, qtbot):
    path = tmp_path / "p.toml"
    path.write_text("", encoding="utf-8")
    window.open_preset(str(path))
    window.project.set_value("training.seed", 7)
    window.ask_unsaved = lambda: SAVE
    assert window.close()
    assert load_preset(path).config.training.seed == 7


def test_the_start_button_follows_validation(window, qtbot):
    window.open_initial_preset()
    window.project.set_value("training.batch_size", 3)
    qtbot.waitUntil(lambda: window.training_tab.start_button.isEnabled(), timeout=5000)
    window.project.set_value("schedule.warmup_ratio", 0.1)
    window.project.set_value("schedule.warmup_steps", 3)  # both: a contradiction
    qtbot.waitUntil(lambda: not window.training_tab.start_button.isEnabled(), timeout=5000)


def test_app_start_does_not_import_torch():
    script = ("import os; os.environ['QT_QPA_PLATFORM']='offscreen'\n"
              "import sys\nfrom gui.app import make_app\nfrom gui.main_window import MainWindow\n"
              "app = make_app(); w = MainWindow(); w.show(); app.processEvents()\n"
              "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"]


def test_the_inspect_dialog_shows_a_loras_metadata(qtbot, tmp_path):
    from core.training.engine import Trainer
    from core.training.events import ListSink
    from gui.inspect_dialog import InspectDialog
    from tests.engine_fixtures import tiny_config

    result = Trainer(tiny_config(tmp_path, steps=2), ListSink()).run()
    dialog = InspectDialog(result.lora_path)
    qtbot.addWidget(dialog)
    text = dialog.text.toPlainText()
    assert "SD 1.x" in text and "dim / alpha       4 / 2" in text
    broken = tmp_path / "x.safetensors"
    broken.write_bytes(b"nonsense")
    assert "x.safetensors" in InspectDialog(str(broken)).text.toPlainText()


def test_importing_a_kohya_config_loads_it_unsaved_with_a_report(window):
    path = ROOT / "tests" / "data" / "kohya"
    sample = sorted(path.glob("*.json"))[0]
    assert window.import_kohya([str(sample)])
    assert window.project.dirty and window.project.path is None
    assert " mapped, " in window.last_import_report


def test_the_import_report_shows_the_counts_and_what_unsupported_keys_did(window, tmp_path):
    # The same counts as `lorakiln import-kohya`'s last line.
    import json

    from core.kohya.import_config import import_kohya

    path = tmp_path / "k.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", "network_dim": 8, "color_aug": True,
                                "model_list": "custom-x"}), encoding="utf-8")
    result = import_kohya([path])
    assert window.import_kohya([str(path)])
    report = window.last_import_report.splitlines()
    assert report[0] == f"{result.summary()}." and report[0].endswith("ignored (no effect), 1 not supported.")
    assert any(line.strip().startswith("color_aug = True") and "(in sd-scripts: shifts the images' hue" in line
               for line in report)


@pytest.mark.slow
def test_demo_training_plots_points_and_closing_the_window_stops_and_saves(window, qtbot, tmp_path):
    from core.training.events import Finished

    window.open_initial_preset()
    window.project.config.output.output_dir = str(tmp_path / "runs")
    finished = []
    window.training_tab.run_finished.connect(finished.append)
    window.tabs.setCurrentWidget(window.training_tab)
    assert window.training_tab.start()
    qtbot.waitUntil(lambda: len(window.training_tab.plots.loss.series("raw")) >= 3, timeout=180_000)
    asked = []
    window.ask_stop_training = lambda: asked.append(True) or True
    assert not window.close()  # asks and stops; the window stays open (and responsive) while it saves
    qtbot.waitUntil(lambda: bool(finished), timeout=180_000)
    qtbot.waitUntil(lambda: not window._closing_after_run, timeout=5000)  # then it closed itself
    assert asked and finished and isinstance(finished[0], Finished) and finished[0].reason == "stopped"
    assert Path(finished[0].lora_path).is_file()


def test_a_builtin_preset_is_remembered_by_name_not_path(window, qtbot):
    window.open_preset(str(find_preset("sd15-prodigy")))
    assert settings().value("project/last_preset") == "builtin-preset:sd15-prodigy"
    again = MainWindow()
    again.ask_unsaved = lambda: DISCARD
    qtbot.addWidget(again)
    again.open_initial_preset()
    assert again.project.name == "sd15-prodigy" and again.project.builtin
