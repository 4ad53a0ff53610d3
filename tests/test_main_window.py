"""The desktop app's main window (offscreen)."""

from PySide6.QtWidgets import QMessageBox

from gui.main_window import MainWindow


def test_window_is_titled_lora_kiln(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.windowTitle() == "LoRA Kiln"


def test_opens_the_demo_preset_and_shows_it_validates(qtbot):
    window = MainWindow()
    qtbot.addWidget(window)
    assert window.open_preset_ref("demo")
    assert window.windowTitle() == "demo — LoRA Kiln"
    text = window._summary.toPlainText()
    assert "builtin:demo-model" in text and "No problems" in text


def test_a_broken_preset_is_shown_to_the_person(qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: shown.append((title, text)))
    bad = tmp_path / "bad.toml"
    bad.write_text("[network]\ndimm = 3\n", encoding="utf-8")
    window = MainWindow()
    qtbot.addWidget(window)
    assert not window.open_preset_ref(str(bad))
    assert shown and "network.dimm: unknown key; did you mean 'dim'?" in shown[0][1]


def test_app_start_does_not_import_torch():
    import subprocess, sys
    script = ("import os; os.environ['QT_QPA_PLATFORM']='offscreen'\n"
              "import sys\nfrom gui.app import make_app\nfrom gui.main_window import MainWindow\n"
              "app = make_app(); w = MainWindow(); w.show(); w.open_preset_ref('demo')\n"
              "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "False"]
