"""The Dataset tab draws each image's loss mask over its thumbnail (offscreen)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config.presets import LoadedPreset
from core.config.schema import SubsetParams, TrainConfig
from gui.dataset_tab import DatasetTab
from gui.project import Project
from gui.thumbnails import LOADED_ROLE, MASK_TINT

WAIT_MS = 15000


@pytest.fixture
def tab(qtbot):
    widget = DatasetTab(Project())
    qtbot.addWidget(widget)
    widget.resize(1200, 850)
    widget.show()
    yield widget
    widget.shutdown()


def _grey_folder(root: Path) -> tuple[Path, Path]:
    images, masks = root / "img", root / "mask"
    images.mkdir()
    masks.mkdir()
    Image.new("RGB", (256, 256), (128, 128, 128)).save(images / "a.png")
    mask = np.zeros((256, 256), dtype=np.uint8)
    mask[:, :128] = 255  # left half trained, right half masked out
    Image.fromarray(mask).save(masks / "a.png")
    return images, masks


def _load(tab: DatasetTab, qtbot, masked_loss: bool, subset: SubsetParams) -> None:
    config = TrainConfig()
    config.dataset.masked_loss = masked_loss
    config.dataset.resolution = (256, 256)
    config.dataset.subsets = [subset]
    tab.project.load(LoadedPreset(config, None))
    qtbot.waitUntil(lambda: not tab.scanner.running and not tab._rescan_timer.isActive() and tab.plan is not None,
                    timeout=WAIT_MS)


def _painted(tab: DatasetTab, qtbot):
    model = tab.thumbnail_model
    index = model.index(0)
    model.data(index, 1)  # DecorationRole asks for the image and its mask
    qtbot.waitUntil(lambda: model.data(index, LOADED_ROLE) and all(l.pending == 0 for l in tab.mask_loaders.values()),
                    timeout=WAIT_MS)
    icon = model.data(index, 1)
    return icon.pixmap(144, 144).toImage()


def _tinted(colour) -> bool:  # noqa: ANN001 - a QColor
    # grey 128 under the magenta tint: red and blue well above green
    return colour.red() - colour.green() > 40 and colour.blue() - colour.green() > 40


def test_the_masked_out_half_is_tinted_and_the_trained_half_is_not(tab, qtbot, tmp_path):
    images, masks = _grey_folder(tmp_path)
    _load(tab, qtbot, True, SubsetParams(image_dir=str(images), mask_dir=str(masks)))
    assert tab.show_masks.isEnabled() and tab.show_masks.isChecked()
    image = _painted(tab, qtbot)
    assert _tinted(image.pixelColor(110, 72)) and not _tinted(image.pixelColor(34, 72))
    assert MASK_TINT.red() > MASK_TINT.green()
    tab.show_masks.setChecked(False)  # the toggle takes the tint away
    image = _painted(tab, qtbot)
    assert not _tinted(image.pixelColor(110, 72))


def test_alpha_masks_show_and_without_masked_loss_the_toggle_is_off(tab, qtbot, tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    rgba = np.full((256, 256, 4), 128, dtype=np.uint8)
    rgba[:, 128:, 3] = 0
    rgba[:, :128, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "a.png")
    _load(tab, qtbot, False, SubsetParams(image_dir=str(folder), alpha_mask=True))
    image = _painted(tab, qtbot)
    assert _tinted(image.pixelColor(110, 72)) and not _tinted(image.pixelColor(34, 72))
    (tmp_path / "other").mkdir()
    images, masks = _grey_folder(tmp_path / "other")
    _load(tab, qtbot, False, SubsetParams(image_dir=str(images), mask_dir=str(masks)))
    assert not tab.show_masks.isEnabled()
    assert not _tinted(_painted(tab, qtbot).pixelColor(110, 72))
