"""The caption editor shows exactly the caption that trains, keeps the rest of the file on
save, and never writes into the app's own demo dataset."""

from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import Qt

from core.config.presets import LoadedPreset, find_preset, load_preset
from core.config.schema import TrainConfig
from core.data.captions import read_caption_file
from core.system.resources import resource_path
from gui.dataset_tab import DatasetTab
from gui.project import Project
from gui.subsets_table import subset_for_folder

WAIT_MS = 15000


@pytest.fixture
def tab(qtbot):
    widget = DatasetTab(Project())
    qtbot.addWidget(widget)
    widget.resize(1200, 850)
    widget.show()
    yield widget
    widget.shutdown()


def _settled(tab: DatasetTab) -> bool:
    return not tab.scanner.running and not tab._rescan_timer.isActive() and (tab.plan is not None or bool(tab.error))


def _load(tab: DatasetTab, qtbot, loaded: LoadedPreset) -> None:
    tab.project.load(loaded)
    qtbot.waitUntil(lambda: _settled(tab), timeout=WAIT_MS)
    assert tab.plan is not None, tab.error


def _folder_with_caption(tab: DatasetTab, qtbot, tmp_path: Path, caption: bytes) -> Path:
    folder = tmp_path / "2_cat"
    folder.mkdir()
    image = folder / "a.png"
    Image.new("RGB", (64, 64)).save(image)
    (folder / "a.txt").write_bytes(caption)
    config = TrainConfig()
    config.dataset.subsets = [subset_for_folder(folder)]
    _load(tab, qtbot, LoadedPreset(config, None))
    assert tab.select_image(str(image))
    return folder / "a.txt"


@pytest.mark.parametrize("caption", [b"cat, sitting\n", b"cat, sitting\r\n", b"  cat, sitting  \nnotes\nmore\n",
                                     b"cat, sitting\r\nnotes\r\n", b"cat, sitting"])
def test_the_text_shown_is_the_text_that_trains(tab, qtbot, tmp_path, caption):
    path = _folder_with_caption(tab, qtbot, tmp_path, caption)
    shown = tab.caption_editor.text.text()
    assert shown == "cat, sitting"
    assert shown == read_caption_file(path)[0] == tab.plan.images[0].record.caption
    assert "\n" not in shown  # one line: no empty second line for a trailing newline


def test_the_note_says_when_the_file_has_lines_that_do_not_train(tab, qtbot, tmp_path):
    _folder_with_caption(tab, qtbot, tmp_path, b"cat\nnotes\n")
    assert "1 more line after this one" in tab.caption_editor.note.text()
    assert "only the first line trains" in tab.caption_editor.note.text()


def test_a_trailing_newline_alone_is_no_extra_line(tab, qtbot, tmp_path):
    _folder_with_caption(tab, qtbot, tmp_path, b"cat\r\n")
    assert "more line" not in tab.caption_editor.note.text()


@pytest.mark.parametrize(("caption", "saved"), [
    (b"cat\n", b"dog, running\n"),
    (b"cat\r\nnotes\r\nmore", b"dog, running\r\nnotes\r\nmore"),
    (b"cat", b"dog, running"),
])
def test_saving_replaces_the_first_line_and_keeps_the_rest(tab, qtbot, tmp_path, caption, saved):
    path = _folder_with_caption(tab, qtbot, tmp_path, caption)
    editor = tab.caption_editor
    editor.text.selectAll()
    qtbot.keyClicks(editor.text, "dog, running")
    qtbot.mouseClick(editor.save_button, Qt.MouseButton.LeftButton)
    assert path.read_bytes() == saved
    assert read_caption_file(path)[0] == "dog, running"


def test_a_pasted_line_break_stays_in_the_one_trained_line(tab, qtbot, tmp_path):
    path = _folder_with_caption(tab, qtbot, tmp_path, b"cat\n")
    editor = tab.caption_editor
    editor.text.setText("dog,\nrunning")
    editor.text.setModified(True)
    assert editor.save()
    assert read_caption_file(path)[0] == path.read_text().splitlines()[0]
    assert path.read_text().count("\n") == 1


def _demo(tab: DatasetTab, qtbot) -> None:
    _load(tab, qtbot, load_preset(find_preset("demo")))
    assert tab.select_image(str(tab.plan.images[0].record.path))


def test_the_demo_dataset_is_read_only_with_a_note_and_a_copy_button(tab, qtbot):
    _demo(tab, qtbot)
    editor = tab.caption_editor
    path = editor.caption_path
    before = path.read_bytes()
    assert path.is_relative_to(resource_path("demo").resolve()) or path.resolve().is_relative_to(
        resource_path("demo").resolve())
    assert editor.text.isReadOnly() and not editor.save_button.isEnabled()
    assert "read-only" in editor.note.text()
    assert editor.copy_demo_button.isVisible()
    editor.text.setText("changed")
    assert not editor.save()  # refused even when asked directly
    assert "read-only" in editor.status.text()
    assert path.read_bytes() == before


def test_copying_the_demo_dataset_switches_the_project_to_the_copy(tab, qtbot, tmp_path):
    _demo(tab, qtbot)
    tab.ask_copy_folder = lambda: str(tmp_path)
    qtbot.mouseClick(tab.caption_editor.copy_demo_button, Qt.MouseButton.LeftButton)
    copy = tmp_path / "LoRA Kiln demo dataset"
    assert sorted(p.name for p in copy.iterdir()) == ["2_kilnstyle bowl", "4_kilnstyle vase"]
    assert tab.project.config.dataset.subsets[0].image_dir == str(copy)
    assert tab.project.dirty
    qtbot.waitUntil(lambda: _settled(tab) and tab.plan is not None
                    and tab.plan.images[0].record.path.is_relative_to(copy), timeout=WAIT_MS)
    image = tab.plan.images[0].record.path
    assert tab.select_image(str(image))
    editor = tab.caption_editor
    assert not editor.text.isReadOnly() and not editor.copy_demo_button.isVisible()
    editor.text.selectAll()
    qtbot.keyClicks(editor.text, "kilnstyle, edited")
    assert editor.save()
    assert read_caption_file(editor.caption_path)[0] == "kilnstyle, edited"


def test_a_second_copy_never_overwrites_the_first(tab, qtbot, tmp_path):
    _demo(tab, qtbot)
    first = tab.copy_demo_dataset(str(tmp_path))
    (first / "mine.txt").write_text("keep")
    _demo(tab, qtbot)
    second = tab.copy_demo_dataset(str(tmp_path))
    assert second == tmp_path / "LoRA Kiln demo dataset 2"
    assert (first / "mine.txt").read_text() == "keep"


def test_copying_into_the_apps_own_folder_is_refused(tab, qtbot):
    _demo(tab, qtbot)
    assert tab.copy_demo_dataset(str(resource_path("demo"))) is None
    assert "app's own folder" in tab.caption_editor.status.text()
    assert tab.project.config.dataset.subsets[0].image_dir == "builtin:demo/dataset"
