"""The Dataset tab (offscreen): scanning, live re-planning, folders, thumbnails, captions."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog



from core.data.buckets import BucketAssignment  # noqa: E402
from core.config.schema import SubsetParams, TrainConfig  # noqa: E402
from core.config.params import param_specs  # noqa: E402
from core.data.plan import plan_dataset  # noqa: E402
from core.config.presets import LoadedPreset, find_preset, load_preset  # noqa: E402
from gui import theme  # noqa: E402
from gui.dataset_tab import DatasetTab  # noqa: E402
from gui.plan_view import NUMBERS  # noqa: E402
from gui.project import Project  # noqa: E402
from gui.subsets_table import COLUMNS, TABLE_FIELDS, subset_for_folder  # noqa: E402
from gui.thumbnails import LOADED_ROLE, compose_thumbnail, crop_rect_in_thumbnail, fit_rect  # noqa: E402

WAIT_MS = 15000


def _image(path: Path, size: tuple[int, int], colour=(200, 100, 50)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


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


def _load_demo(tab: DatasetTab, qtbot) -> None:
    _load(tab, qtbot, load_preset(find_preset("demo")))
    assert tab.plan is not None, tab.error


def _load_folder(tab: DatasetTab, qtbot, *subsets: SubsetParams) -> None:
    config = TrainConfig()
    config.dataset.subsets = list(subsets)
    _load(tab, qtbot, LoadedPreset(config, None))


def _expected(tab: DatasetTab):
    config = tab.project.config
    return plan_dataset(config.dataset, config.training, base_dir=tab.project.base_dir)


def _shown(tab: DatasetTab) -> dict[str, str]:
    return {key: tab.plan_view.number(key) for key, _ in NUMBERS}


def _numbers_of(plan) -> dict[str, str]:
    return {"images": str(len(plan.images)), "with_repeats": str(plan.num_train_images + plan.num_reg_images),
            "buckets": str(len(plan.buckets)), "batches_per_epoch": str(plan.batches_per_epoch),
            "steps_per_epoch": str(plan.steps.steps_per_epoch), "epochs": str(plan.steps.epochs),
            "max_train_steps": str(plan.steps.max_train_steps)}


def test_the_demo_scan_shows_the_numbers_the_trainer_plans(tab, qtbot):
    _load_demo(tab, qtbot)
    expected = _expected(tab)
    assert _shown(tab) == _numbers_of(expected)
    assert tab.plan_view.histogram.bars() == sorted(expected.buckets.items(), key=lambda i: i[0][0] / i[0][1])
    shown_warnings = [tab.plan_view.warnings.item(i).text() for i in range(tab.plan_view.warnings.count())]
    assert shown_warnings == expected.scan_warnings + expected.warnings
    assert tab.thumbnail_model.rowCount() == len(expected.images)


def test_resolution_and_batch_size_replan_without_rescanning(tab, qtbot):
    _load_demo(tab, qtbot)
    scans = tab.scan_count
    with qtbot.waitSignal(tab.plan_changed, timeout=1000):
        tab.project.set_value("dataset.resolution", (512, 512))
    expected = _expected(tab)
    assert _shown(tab) == _numbers_of(expected)
    assert dict(tab.plan_view.histogram.bars()) == expected.buckets
    assert all(image.bucket[0] * image.bucket[1] > 256 * 256 for image in tab.plan.images)

    before = int(tab.plan_view.number("batches_per_epoch"))
    tab.project.set_value("training.batch_size", 1)
    after = int(tab.plan_view.number("batches_per_epoch"))
    assert after == _expected(tab).batches_per_epoch and after > before
    qtbot.wait(400)  # longer than the rescan debounce: nothing may have been queued
    assert tab.scan_count == scans


def test_a_small_bucket_is_drawn_as_a_warning(tab, qtbot):
    _load_demo(tab, qtbot)
    tab.project.set_value("training.batch_size", 25)  # the 320x192 bucket holds 20
    histogram = tab.plan_view.histogram
    picture = histogram.grab().toImage()
    colours = [picture.pixelColor(rect.center().toPoint()).name() for rect in histogram.bar_rects()]
    expected = [theme.WARNING.lower() if count < 25 else theme.ACCENT.lower() for _, count in histogram.bars()]
    assert colours == expected and theme.WARNING.lower() in colours
    assert any("fewer images than the batch size 25" in w for w in tab.plan.warnings)


def test_a_bucket_error_is_shown_instead_of_numbers(tab, qtbot):
    _load_demo(tab, qtbot)
    with qtbot.waitSignal(tab.plan_changed) as signal:
        tab.project.set_value("dataset.min_bucket_reso", 320)  # above the 256 px resolution
    assert signal.args == [None]
    assert tab.plan_view.showing_error
    text = tab.plan_view.error_label.text()
    assert "dataset.resolution:" in text and "below min_bucket_reso (320)" in text
    assert tab.plan_view.number("batches_per_epoch") == "—"
    assert tab.thumbnail_model.rowCount() == 0
    tab.project.set_value("dataset.min_bucket_reso", 128)
    assert not tab.plan_view.showing_error and tab.plan is not None


def test_a_folder_with_kohya_subfolders_is_added_in_kohya_layout(tab, qtbot, tmp_path, monkeypatch):
    _load_demo(tab, qtbot)
    root = tmp_path / "train"
    _image(root / "3_dog" / "a.png", (512, 512))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(root))
    scans = tab.scan_count
    qtbot.mouseClick(tab.subsets.add_button, Qt.MouseButton.LeftButton)
    added = tab.project.config.dataset.subsets[-1]
    assert (added.image_dir, added.kohya_layout) == (str(root), True)
    assert tab.subsets.model.rowCount() == 2
    qtbot.waitUntil(lambda: tab.scan_count > scans and _settled(tab), timeout=WAIT_MS)
    assert any(image.record.path == root / "3_dog" / "a.png" for image in tab.plan.images)
    assert tab.plan.num_train_images == _expected(tab).num_train_images


def test_a_folder_named_n_name_dropped_on_the_table_gets_its_repeats(tab, qtbot, tmp_path):
    folder = tmp_path / "5_cat"
    _image(folder / "a.png", (512, 512))
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    drop = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    tab.subsets.view.dropEvent(drop)
    subset = tab.project.config.dataset.subsets[-1]
    assert (subset.num_repeats, subset.class_tokens, subset.kohya_layout) == (5, "cat", False)
    qtbot.waitUntil(lambda: _settled(tab) and tab.plan is not None, timeout=WAIT_MS)
    assert tab.plan.num_train_images == 5


def test_subset_guessing_from_folder_names(tmp_path):
    (tmp_path / "plain").mkdir()
    assert subset_for_folder(tmp_path / "plain").num_repeats == 1
    (tmp_path / "0_none").mkdir()
    assert subset_for_folder(tmp_path / "0_none").num_repeats == 1  # 0 repeats is not a Kohya folder
    (tmp_path / "root" / "10_a b").mkdir(parents=True)
    assert subset_for_folder(tmp_path / "root").kohya_layout


def test_editing_repeats_in_the_table_writes_the_project(tab, qtbot, tmp_path):
    _image(tmp_path / "imgs" / "a.png", (512, 512))
    _load_folder(tab, qtbot, SubsetParams(image_dir=str(tmp_path / "imgs")))
    model = tab.subsets.model
    index = model.index(0, [name for name, _ in COLUMNS].index("num_repeats"))
    assert model.setData(index, 3, Qt.ItemDataRole.EditRole)
    assert tab.project.config.dataset.subsets[0].num_repeats == 3
    qtbot.waitUntil(lambda: _settled(tab) and tab.plan.num_train_images == 3, timeout=WAIT_MS)

    assert not model.setData(index, 0, Qt.ItemDataRole.EditRole)  # below the minimum of 1
    assert tab.project.config.dataset.subsets[0].num_repeats == 3
    assert "below the minimum" in tab.subsets.error_label.text() and tab.subsets.error_label.isVisibleTo(tab)

    reg = model.index(0, [name for name, _ in COLUMNS].index("is_reg"))
    assert model.setData(reg, Qt.CheckState.Checked.value, Qt.ItemDataRole.CheckStateRole)
    assert tab.project.config.dataset.subsets[0].is_reg


def test_the_detail_panel_is_generated_from_the_schema(tab, qtbot, tmp_path):
    _image(tmp_path / "imgs" / "a.png", (512, 512))
    _load_folder(tab, qtbot, SubsetParams(image_dir=str(tmp_path / "imgs")))
    details = tab.subsets.details
    expected = [spec.name for spec in param_specs(SubsetParams) if spec.name not in TABLE_FIELDS]
    assert list(details._editors) == expected
    details._editors["flip_aug"].setChecked(True)
    details._editors["caption_dropout_rate"].setValue(0.25)
    subset = tab.project.config.dataset.subsets[0]
    assert subset.flip_aug and subset.caption_dropout_rate == 0.25


def test_skipped_files_are_listed_with_their_reason(tab, qtbot, tmp_path):
    _image(tmp_path / "imgs" / "good.png", (512, 512))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"this is not a png")
    _load_folder(tab, qtbot, SubsetParams(image_dir=str(tmp_path / "imgs")))
    skipped = [tab.plan_view.skipped.item(i).text() for i in range(tab.plan_view.skipped.count())]
    reason = next(s.reason for s in _expected(tab).skipped if s.path.name == "broken.png")
    assert skipped == [f"{tmp_path / 'imgs' / 'broken.png'}: {reason}"]
    assert tab.plan_view.tabs.tabText(2) == "Skipped (1)"


def test_a_missing_folder_is_named_in_the_plan_view(tab, qtbot, tmp_path):
    _load_folder(tab, qtbot, SubsetParams(image_dir=str(tmp_path / "nowhere")))
    assert tab.plan is None and tab.plan_view.showing_error
    assert "dataset.subsets[0].image_dir" in tab.plan_view.error_label.text()


def test_thumbnails_load_lazily_and_show_their_bucket(tab, qtbot):
    _load_demo(tab, qtbot)
    model = tab.thumbnail_model
    first = model.index(0)
    model.data(first, Qt.ItemDataRole.DecorationRole)  # what the view's paint asks for
    qtbot.waitUntil(lambda: model.data(first, LOADED_ROLE), timeout=WAIT_MS)
    assert not model.data(first, Qt.ItemDataRole.DecorationRole).isNull()
    image = model.image_at(0)
    assert model.data(first) == f"{image.bucket[0]}x{image.bucket[1]}"


def test_the_bucket_filter_shows_one_bucket(tab, qtbot):
    _load_demo(tab, qtbot)
    bucket, _ = tab.plan_view.histogram.bars()[0]
    tab.plan_view.bucket_clicked.emit(bucket)  # what clicking its bar does
    rows = [tab.thumbnail_model.image_at(r) for r in range(tab.thumbnail_model.rowCount())]
    assert rows and all(image.bucket == bucket for image in rows)
    assert tab.filter_combo.currentIndex() == 1
    tab.set_bucket_filter(None)
    assert tab.thumbnail_model.rowCount() == len(tab.plan.images)


def test_crop_box_maps_onto_the_thumbnail():
    # A 1000x500 image fits a 144 px square as 144x72 at y=36; resized to 768x384 and
    # cropped to 640x384 at x=64, the kept area is x 12..132 of the thumbnail.
    image_rect = fit_rect((1000, 500), (144, 144))
    assert image_rect == (0.0, 36.0, 144.0, 72.0)
    assert crop_rect_in_thumbnail((64, 0, 704, 384), (768, 384), image_rect) == (12.0, 36.0, 120.0, 72.0)
    tall = fit_rect((300, 600), (144, 144))
    assert tall == (36.0, 0.0, 72.0, 144.0)
    assert crop_rect_in_thumbnail((0, 32, 320, 416), (320, 640), tall) == (36.0, 7.2, 72.0, 86.4)


def test_the_overlay_darkens_only_what_training_crops(qtbot):
    from core.data.scan import ImageRecord
    from core.data.imageinfo import ImageInfo
    from core.data.dataset_plan import PlanImage

    info = ImageInfo((1000, 500), (1000, 500), "PNG", "RGB", 1, 0, 1)
    record = ImageRecord(Path("x.png"), "x.png", (1000, 500), info, "", "none", 0, False, 1)
    item = PlanImage(record, BucketAssignment((640, 384), (768, 384), (64, 0, 704, 384), 0.0, False), 1)
    white = Image.new("RGB", (144, 72), (255, 255, 255))
    from PySide6.QtGui import QImage
    qimage = QImage(white.tobytes(), 144, 72, 3 * 144, QImage.Format.Format_RGB888).copy()
    picture = compose_thumbnail(qimage, item, 144).toImage()
    assert picture.pixelColor(5, 70).red() < 200  # left band: cropped away, darkened
    assert picture.pixelColor(72, 70).red() == 255  # inside the kept area
    frame = picture.pixelColor(13, 70)
    assert (frame.red(), frame.green(), frame.blue()) == (theme.BUCKET_FRAME.red(), theme.BUCKET_FRAME.green(),
                                                          theme.BUCKET_FRAME.blue())
    assert picture.pixelColor(72, 10).alpha() == 0  # outside the image: transparent


def test_saving_a_caption_writes_the_file_and_rescans(tab, qtbot, tmp_path):
    image = _image(tmp_path / "2_cat" / "a.png", (512, 512))
    _load_folder(tab, qtbot, subset_for_folder(tmp_path / "2_cat"))
    assert tab.select_image(str(image))
    editor = tab.caption_editor
    assert editor.text.text() == "cat" and editor.caption_path == tmp_path / "2_cat" / "a.txt"
    scans = tab.scan_count
    editor.text.selectAll()
    qtbot.keyClicks(editor.text, "cat, sitting, orange fur")
    assert editor.save_button.isEnabled()
    qtbot.mouseClick(editor.save_button, Qt.MouseButton.LeftButton)
    assert (tmp_path / "2_cat" / "a.txt").read_text(encoding="utf-8") == "cat, sitting, orange fur"
    qtbot.waitUntil(lambda: tab.scan_count > scans and _settled(tab), timeout=WAIT_MS)
    assert tab.plan.images[0].record.caption == "cat, sitting, orange fur"
    assert tab.scan_result.tag_frequency["2_cat"] == {"cat": 1, "sitting": 1, "orange fur": 1}
    assert editor.image is not None and editor.text.text() == "cat, sitting, orange fur"


def test_a_slow_scan_reports_progress_and_can_be_cancelled(tab, qtbot, tmp_path, monkeypatch):
    for i in range(150):
        _image(tmp_path / "many" / f"{i:03}.png", (64, 64))
    import core.data.scan

    real = core.data.scan.read_image_info

    def slow(path):
        time.sleep(0.01)
        return real(path)

    monkeypatch.setattr(core.data.scan, "read_image_info", slow)
    tab.project.load(LoadedPreset(_config_with(SubsetParams(image_dir=str(tmp_path / "many"))), None))
    qtbot.waitUntil(lambda: tab.scan_progress.maximum() == 150, timeout=WAIT_MS)
    assert tab.cancel_button.isVisible()
    with qtbot.waitSignal(tab.scanner.cancelled, timeout=WAIT_MS):
        qtbot.mouseClick(tab.cancel_button, Qt.MouseButton.LeftButton)
    assert "cancelled" in tab.scan_status.text() and not tab.cancel_button.isVisible()


def _config_with(*subsets: SubsetParams) -> TrainConfig:
    config = TrainConfig()
    config.dataset.subsets = list(subsets)
    return config


def test_the_dataset_tab_does_not_import_torch():
    script = ("import os, sys; os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
              "import gui.dataset_tab\nprint('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
