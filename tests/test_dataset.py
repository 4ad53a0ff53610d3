"""Scanning datasets: Kohya folders, explicit subsets, captions, skipped files, cancelling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

import core.data.scan as dataset
import core.system.resources as resources
from core.config.schema import DatasetParams, SubsetParams
from core.data.scan import (DatasetError, ScanCancelled, kohya_subsets, parse_kohya_folder_name,
                          resolve_subsets, scan_dataset)


def _image(path: Path, size: tuple[int, int] = (32, 24), caption: str | None = None,
           **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path, **options)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def _kohya(root: Path | str, **options: object) -> SubsetParams:
    return SubsetParams(image_dir=str(root), kohya_layout=True, **options)  # type: ignore[arg-type]


def _kohya_params(root: Path | str) -> DatasetParams:
    return DatasetParams(subsets=[_kohya(root)])


@pytest.mark.parametrize("name, expected", [
    ("10_cat", (10, "cat")), ("010_cat", (10, "cat")), ("1_cat_dog", (1, "cat_dog")),
    ("10_", (10, "")), ("10", (10, "")), ("3_sks woman", (3, "sks woman")),
    ("0_cat", (0, "cat")), ("-2_cat", (-2, "cat")),
    ("cat", None), ("_10_cat", None), ("ten_cat", None), ("1.5_cat", None), ("", None),
])
def test_parse_kohya_folder_name(name: str, expected: tuple[int, str] | None) -> None:
    assert parse_kohya_folder_name(name) == expected


def test_kohya_subsets_sorted_with_repeats_and_class_tokens(tmp_path: Path) -> None:
    for name in ("5_dog", "10_cat", "2_sks_person", "notes", "0_zero", ".ipynb_checkpoints"):
        (tmp_path / name).mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    warnings: list[str] = []
    subsets = kohya_subsets(tmp_path, is_reg=False, warnings=warnings,
                            template=SubsetParams(caption_extension=".caption", flip_aug=True))
    assert [s.name for s in subsets] == ["10_cat", "2_sks_person", "5_dog"]
    assert [(s.params.num_repeats, s.params.class_tokens) for s in subsets] == [
        (10, "cat"), (2, "sks_person"), (5, "dog")]
    assert all(s.source == "kohya" and not s.params.is_reg for s in subsets)
    assert all(s.params.caption_extension == ".caption" and s.params.flip_aug for s in subsets)
    assert subsets[0].image_dir == tmp_path / "10_cat"
    assert subsets[0].display_dir == os.path.join(str(tmp_path), "10_cat")
    assert len(warnings) == 2
    assert "'0_zero'" in warnings[0] and "skipped" in warnings[0]
    assert "'notes'" in warnings[1] and "no leading repeat count (N_name); skipped" in warnings[1]


def test_images_directly_in_the_kohya_root_are_ignored_with_one_warning(tmp_path: Path) -> None:
    _image(tmp_path / "loose1.png")
    _image(tmp_path / "loose2.png")
    _image(tmp_path / "3_cat" / "a.png")
    result = scan_dataset(_kohya_params(tmp_path))
    assert [r.path.name for r in result.images] == ["a.png"]
    assert sum("directly in" in w for w in result.warnings) == 1


def test_files_sorted_any_case_extensions_and_others_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "1_cat"
    for name, fmt in (("c.PNG", "PNG"), ("a.Jpg", "JPEG"), ("b.webp", "WEBP"), ("d.bmp", "BMP"),
                      ("e.jpeg", "JPEG"), ("f.gif", "GIF")):
        _image(folder / name, format=fmt)
    (folder / "a.txt").write_text("a caption")
    (folder / "sub.png").mkdir()  # a folder with an image-like name is not an image
    result = scan_dataset(_kohya_params(tmp_path))
    assert [r.path.name for r in result.images] == ["a.Jpg", "b.webp", "c.PNG", "d.bmp", "e.jpeg"]
    assert result.skipped == []
    assert result.images[0].path == folder / "a.Jpg"
    assert result.images[0].display_path == os.path.join(str(tmp_path), "1_cat", "a.Jpg")


def test_caption_file_first_line_else_class_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "4_sks cat"
    _image(folder / "a.png", caption="tabby, sitting\nignored line")
    _image(folder / "b.png")
    result = scan_dataset(_kohya_params(tmp_path))
    a, b = result.images
    assert (a.caption, a.caption_source) == ("tabby, sitting", "file")
    assert (b.caption, b.caption_source) == ("sks cat", "class_tokens")
    assert a.num_repeats == b.num_repeats == 4 and not a.is_reg


def test_caption_warnings_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "1_cat"
    _image(folder / "a.png")
    (folder / "a.txt").write_bytes("caf\u00e9".encode("cp1252"))
    _image(folder / "b.png")
    (folder / "b.txt").write_bytes(b"")
    result = scan_dataset(_kohya_params(tmp_path))
    assert [r.caption for r in result.images] == ["caf\u00e9", ""]
    assert any("a.txt" in w and "Windows-1252" in w for w in result.warnings)
    assert any("b.txt" in w and "empty caption file" in w for w in result.warnings)


def test_no_caption_and_no_class_tokens_gives_one_warning_per_subset(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        _image(tmp_path / "10_" / name)
    result = scan_dataset(_kohya_params(tmp_path))
    assert [(r.caption, r.caption_source) for r in result.images] == [("", "none")] * 2
    assert sum("2 images have no caption file" in w for w in result.warnings) == 1


def test_prefix_and_suffix_are_joined_with_spaces_as_sd_scripts_does(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "a.png", caption="tabby, sitting")
    _image(tmp_path / "imgs" / "b.png")
    subset = SubsetParams(image_dir=str(tmp_path / "imgs"), caption_prefix="sks,",
                          caption_suffix=", photo")
    result = scan_dataset(DatasetParams(subsets=[subset]))
    assert [r.caption for r in result.images] == ["sks, tabby, sitting , photo", "sks, , photo"]
    # Tag frequency counts the caption itself, without prefix and suffix.
    assert result.tag_frequency == {"imgs": {"tabby": 1, "sitting": 1}}


def test_caption_extension_from_the_subset(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "a.png", caption="from txt")
    (tmp_path / "imgs" / "a.caption").write_text("from caption")
    subset = SubsetParams(image_dir=str(tmp_path / "imgs"), caption_extension=".caption")
    assert scan_dataset(DatasetParams(subsets=[subset])).images[0].caption == "from caption"


def test_exif_rotated_image_is_recorded_with_its_displayed_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(tmp_path / "1_cat" / "rotated.jpg", size=(64, 48), exif=exif)
    record = scan_dataset(_kohya_params(tmp_path)).images[0]
    assert record.size == (48, 64) and record.info.stored_size == (64, 48)


def test_broken_files_are_skipped_with_their_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "1_cat"
    _image(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    result = scan_dataset(_kohya_params(tmp_path))
    assert [r.path.name for r in result.images] == ["good.png"]
    assert {s.path.name: s.reason for s in result.skipped} == {
        "empty.png": "empty file (0 bytes)", "text.png": "not a valid PNG file"}
    assert result.skipped[0].display_path == os.path.join(str(tmp_path), "1_cat", "empty.png")


def test_subset_without_usable_images_warns(tmp_path: Path) -> None:
    (tmp_path / "1_empty").mkdir()
    (tmp_path / "2_broken").mkdir()
    (tmp_path / "2_broken" / "x.png").write_bytes(b"")
    _image(tmp_path / "3_ok" / "a.png")
    result = scan_dataset(_kohya_params(tmp_path))
    assert any("1_empty" in w and "no images found" in w for w in result.warnings)
    assert any("2_broken" in w and "can be used" in w for w in result.warnings)
    assert set(result.tag_frequency) == {"3_ok"}


def test_reg_folder(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "5_sks dog" / "a.png")
    _image(tmp_path / "reg" / "1_dog" / "r1.png")
    _image(tmp_path / "reg" / "1_dog" / "r2.png")
    result = scan_dataset(DatasetParams(subsets=[_kohya(tmp_path / "train"),
                                                 _kohya(tmp_path / "reg", is_reg=True)]))
    assert [(s.name, s.params.is_reg) for s in result.subsets] == [("5_sks dog", False), ("1_dog", True)]
    assert [(r.path.name, r.is_reg, r.subset_index, r.caption) for r in result.images] == [
        ("a.png", False, 0, "sks dog"), ("r1.png", True, 1, "dog"), ("r2.png", True, 1, "dog")]


def test_kohya_folders_expand_in_place_among_explicit_subsets(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "2_cat" / "a.png")
    _image(tmp_path / "train" / "1_dog" / "a.png")
    _image(tmp_path / "extra" / "b.png")
    params = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path / "extra"), num_repeats=3),
                                    _kohya(tmp_path / "train", num_repeats=7, class_tokens="ignored")])
    subsets = resolve_subsets(params)
    assert [(s.name, s.source, s.params.num_repeats, s.params.class_tokens) for s in subsets] == [
        ("extra", "subset", 3, ""), ("1_dog", "kohya", 1, "dog"), ("2_cat", "kohya", 2, "cat")]
    assert not any(s.params.kohya_layout for s in subsets)


def test_a_kohya_folder_passes_its_caption_options_to_every_sub_folder(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "2_cat" / "a.png")
    _image(tmp_path / "train" / "1_dog" / "a.png")
    template = _kohya(tmp_path / "train", caption_extension=".caption", shuffle_caption=True,
                      keep_tokens=1, flip_aug=True)
    subsets = resolve_subsets(DatasetParams(subsets=[template]))
    assert {(s.params.caption_extension, s.params.shuffle_caption, s.params.keep_tokens,
             s.params.flip_aug) for s in subsets} == {(".caption", True, 1, True)}


def test_relative_subset_paths_resolve_against_base_dir(tmp_path: Path) -> None:
    _image(tmp_path / "presets" / "data" / "imgs" / "a.png")
    params = DatasetParams(subsets=[SubsetParams(image_dir="data/imgs")])
    result = scan_dataset(params, base_dir=tmp_path / "presets")
    assert result.subsets[0].image_dir == tmp_path / "presets" / "data" / "imgs"
    assert result.subsets[0].display_dir == "data/imgs"
    assert result.images[0].display_path == os.path.join("data/imgs", "a.png")
    assert result.images[0].path.is_absolute()


def test_relative_paths_without_base_dir_use_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "train" / "1_cat" / "a.png")
    monkeypatch.chdir(tmp_path)
    result = scan_dataset(_kohya_params("train"))
    assert result.images[0].path == tmp_path / "train" / "1_cat" / "a.png"
    assert result.images[0].display_path == os.path.join("train", "1_cat", "a.png")


def test_home_folder_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "pics" / "a.png")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    result = scan_dataset(DatasetParams(subsets=[SubsetParams(image_dir="~/pics")]))
    assert result.images[0].path == tmp_path / "pics" / "a.png"
    assert result.images[0].display_path == os.path.join("~/pics", "a.png")


def test_builtin_paths_resolve_through_the_resources(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "demo" / "dataset" / "2_bowl" / "a.png")
    monkeypatch.setattr(resources, "resources_root", lambda: tmp_path)
    kohya = scan_dataset(_kohya_params("builtin:demo/dataset"))
    assert kohya.images[0].display_path == "builtin:demo/dataset/2_bowl/a.png"
    assert kohya.images[0].path == tmp_path / "demo" / "dataset" / "2_bowl" / "a.png"
    explicit = scan_dataset(DatasetParams(subsets=[SubsetParams(image_dir="builtin:demo/dataset/2_bowl")]))
    assert explicit.subsets[0].name == "2_bowl"
    assert explicit.images[0].display_path == "builtin:demo/dataset/2_bowl/a.png"


@pytest.mark.parametrize("is_reg", [False, True])
def test_missing_kohya_folder_names_the_field_and_path(tmp_path: Path, is_reg: bool) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError) as caught:
        resolve_subsets(DatasetParams(subsets=[_kohya(missing, is_reg=is_reg)]))
    message = str(caught.value)
    assert "dataset.subsets[0].image_dir" in message and missing in message and "does not exist" in message


def test_missing_subset_folder_names_the_field(tmp_path: Path) -> None:
    _image(tmp_path / "ok" / "a.png")
    params = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path / "ok")),
                                    SubsetParams(image_dir="gone")])
    with pytest.raises(DatasetError) as caught:
        scan_dataset(params, base_dir=tmp_path)
    message = str(caught.value)
    assert "dataset.subsets[1].image_dir" in message and "'gone'" in message
    assert str(tmp_path / "gone") in message  # the resolved path, so the user sees where we looked


def test_file_instead_of_folder_is_an_error(tmp_path: Path) -> None:
    image = _image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"dataset\.subsets\[0\]\.image_dir: .* is a file, not a folder"):
        scan_dataset(_kohya_params(image))


def test_empty_subset_folder_setting_is_an_error() -> None:
    with pytest.raises(DatasetError, match=r"dataset\.subsets\[0\]\.image_dir is empty"):
        resolve_subsets(DatasetParams(subsets=[SubsetParams()]))


def test_no_subset_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no image folder: add one to dataset.subsets"):
        scan_dataset(DatasetParams())
    with pytest.raises(DatasetError, match="no N_name sub-folders"):
        scan_dataset(_kohya_params(tmp_path))  # a Kohya root with nothing usable says why


def test_tag_frequency_per_folder_counts_images_not_repeats(tmp_path: Path) -> None:
    _image(tmp_path / "10_cat" / "a.png", caption="cat, sitting")
    _image(tmp_path / "10_cat" / "b.png", caption="Cat, red hat")
    _image(tmp_path / "10_cat" / "c.png")
    _image(tmp_path / "2_dog" / "d.png", caption="dog, , sitting")
    result = scan_dataset(_kohya_params(tmp_path))
    assert result.tag_frequency == {
        "10_cat": {"cat": 3, "sitting": 1, "red hat": 1},
        "2_dog": {"dog": 1, "sitting": 1},
    }


def test_the_same_folder_twice_is_warned_about(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "a.png")
    subset = SubsetParams(image_dir=str(tmp_path / "imgs"))
    result = scan_dataset(DatasetParams(subsets=[subset, subset]))
    assert len(result.images) == 2
    assert any("more than one subset" in w for w in result.warnings)


def test_unreadable_folder_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _image(tmp_path / "locked" / "a.png")
    _image(tmp_path / "open" / "b.png")
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if Path(os.fspath(path)).name == "locked":  # chmod does not stop root, so fake it
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)
    monkeypatch.setattr(dataset.os, "scandir", scandir)
    params = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path / d)) for d in ("locked", "open")])
    result = scan_dataset(params)
    assert [r.path.name for r in result.images] == ["b.png"]
    assert any("locked" in w and "permission denied" in w for w in result.warnings)


def test_cancelling_raises_scan_cancelled(tmp_path: Path) -> None:
    for i in range(dataset.CHECK_EVERY + 5):
        _image(tmp_path / "1_cat" / f"{i:03}.png", size=(8, 8))
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 2  # let the first check pass, then stop
    with pytest.raises(ScanCancelled):
        scan_dataset(_kohya_params(tmp_path), cancelled=cancelled)


def test_progress_reports_done_out_of_total(tmp_path: Path) -> None:
    for i in range(dataset.CHECK_EVERY + 5):
        _image(tmp_path / "1_cat" / f"{i:03}.png", size=(8, 8))
    (tmp_path / "1_cat" / "bad.png").write_bytes(b"")
    reports: list[tuple[int, int]] = []
    scan_dataset(_kohya_params(tmp_path), progress=lambda done, total: reports.append((done, total)))
    total = dataset.CHECK_EVERY + 6
    assert reports[0] == (0, total) and reports[-1] == (total, total)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
