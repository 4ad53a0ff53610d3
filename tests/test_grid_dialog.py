"""The Make grid dialog: a tiny real grid of two runs' LoRAs, made off the GUI thread, shown and
saved; cancelling; problems with the fields shown in the dialog."""

import copy
import json
import threading
from pathlib import Path

import pytest
from PIL import Image

from core.studies.run_index import load_run
from gui.grid_dialog import GridDialog, parse_seeds, parse_sizes

TIMEOUT_MS = 120_000
PROMPT = "kiln, blue background --w 64 --h 64 --s 2"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from core.training.engine import Trainer
    from core.training.events import ListSink
    from tests.engine_fixtures import tiny_config

    root = tmp_path_factory.mktemp("grid_runs")
    base = tiny_config(root, steps=2)
    dirs = []
    for dim in (2, 4):
        config = copy.deepcopy(base)
        config.network.dim = dim
        dirs.append(Path(Trainer(config, ListSink()).run().run_dir))
    return dirs


@pytest.fixture
def fake_runs(tmp_path):
    """Run folders with settings and a (never loaded) LoRA file: enough to check the fields."""
    from core.config.presets import dumps_preset
    from tests.engine_fixtures import tiny_config

    dirs = []
    for dim in (2, 4):
        config = tiny_config(tmp_path / f"data{dim}")
        config.network.dim = dim
        run = tmp_path / f"20250101-00000{dim}-tiny"
        run.mkdir()
        (run / "config.toml").write_text(dumps_preset(config, sparse=False), encoding="utf-8")
        (run / "summary.json").write_text(json.dumps({"status": "completed", "name": "tiny"}), encoding="utf-8")
        (run / "tiny.safetensors").write_bytes(b"never read by these tests")
        dirs.append(run)
    return dirs


def make_dialog(qtbot, run_dirs):
    dialog = GridDialog([load_run(d) for d in run_dirs])
    qtbot.addWidget(dialog)
    dialog.prompts_edit.setPlainText(PROMPT)
    dialog.columns_combo.setCurrentIndex(dialog.columns_combo.findData("seeds"))
    dialog.seeds_edit.setText("1, 2")
    return dialog


@pytest.fixture
def dialog(qtbot, two_runs):
    dialog = make_dialog(qtbot, two_runs)
    yield dialog
    dialog.cancel()
    qtbot.waitUntil(lambda: not dialog.is_running(), timeout=TIMEOUT_MS)


def test_seeds_and_sizes_are_read_or_refused_by_name():
    assert parse_seeds(" 1, 22 ,3") == [1, 22, 3]
    assert parse_sizes("512x512, 768 x 512") == [(512, 512), (768, 512)]
    with pytest.raises(ValueError, match="seeds: 'x1'"):
        parse_seeds("1, x1")
    with pytest.raises(ValueError, match="sizes: '512'"):
        parse_sizes("512")


@pytest.mark.slow
def test_a_tiny_grid_is_made_in_the_background_shown_and_saved(qtbot, dialog, two_runs):
    dialog.base_row_box.setChecked(True)
    with qtbot.waitSignal(dialog.grid_done, timeout=TIMEOUT_MS) as done:
        assert dialog.generate()
        assert dialog.is_running() and dialog.cancel_button.isEnabled() and not dialog.generate_button.isEnabled()
    assert done.args == ["done"], dialog.message.text()
    assert [row.label for row in dialog.spec.rows] == ["dim=2", "dim=4"]  # named like the legend
    assert dialog.progress.value() == dialog.progress.maximum()
    saved = dialog.saved_path
    assert saved is not None and saved.parent == two_runs[0] / "grids" and saved.is_file()
    image = Image.open(saved)
    assert image.size == dialog.image.size and image.width > 2 * 64 and image.height > 3 * 64  # 3 rows x 2 seeds
    assert "lorakiln-grid" in image.text and not dialog.picture.pixmap().isNull()
    again = dialog.save(two_runs[0] / "copy.png")
    assert again.is_file() and dialog.save_button.isEnabled()


@pytest.mark.slow
def test_cancel_stops_the_grid_between_images(qtbot, dialog, monkeypatch):
    from core.models.sd1 import SD1Family

    real_generate = SD1Family.generate
    started = threading.Event()

    def slow_generate(*args, **kwargs):
        started.set()
        dialog._job.cancel_event.wait(30) if dialog._job else None
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(SD1Family, "generate", slow_generate)  # the demo model's family draws the cells
    with qtbot.waitSignal(dialog.grid_done, timeout=TIMEOUT_MS) as done:
        assert dialog.generate()
        qtbot.waitUntil(started.is_set, timeout=TIMEOUT_MS)
        dialog.cancel_button.click()
    assert done.args == ["cancelled"] and dialog.image is None and dialog.saved_path is None
    assert dialog.message.text() == "Cancelled: nothing was saved." and dialog.generate_button.isEnabled()


def test_problems_with_the_fields_are_shown_in_the_dialog(qtbot, fake_runs):
    dialog = make_dialog(qtbot, fake_runs)
    dialog.seeds_edit.setText("1, two")
    assert not dialog.generate() and "seeds: 'two'" in dialog.message.text()
    dialog.seeds_edit.setText("")
    assert not dialog.generate() and "at least one seed" in dialog.message.text()
    dialog.prompts_edit.setPlainText("")
    assert not dialog.generate() and "no prompts" in dialog.message.text()
    dialog.prompts_edit.setPlainText("kiln --w banana")
    assert not dialog.generate() and dialog.message.text().startswith("prompts:")
    assert not dialog.is_running()


def test_a_run_without_a_lora_is_named(qtbot, fake_runs):
    (fake_runs[0] / "tiny.safetensors").unlink()  # as a run cancelled before it saved
    dialog = make_dialog(qtbot, fake_runs[:1])
    assert not dialog.generate() and "has no LoRA file" in dialog.message.text()
    assert fake_runs[0].name in dialog.message.text()


def test_one_run_with_checkpoints_defaults_to_its_checkpoint_rows(qtbot, fake_runs):
    (fake_runs[0] / "checkpoints").mkdir()
    (fake_runs[0] / "checkpoints" / "tiny-000001.safetensors").write_bytes(b"x")
    dialog = make_dialog(qtbot, fake_runs[:1])
    assert dialog.checkpoints_radio.isChecked()
    assert [row.label for row in dialog.build_spec().rows] == ["epoch 1", "final"]
