"""Scanning a dataset into image records: folders, sizes and captions, from headers only.

The layout rules are sd-scripts': a Kohya training folder holds ``N_words`` sub-folders
(N repeats, words the class tokens), explicit subsets name their folder and options, the
caption of ``img.png`` is ``img`` + caption extension, first line only. Problems with one
file skip that file with a reason; problems with the whole dataset raise
:class:`DatasetError` with a message that names the setting to change.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.data.captions import read_caption_file, tag_frequency
from core.config.schema import DatasetParams, SubsetParams
from core.data.imageinfo import ImageInfo, ImageProblem, is_image_file, read_image_info
from core.system.resources import is_builtin, resolve_builtin
from core.system.words import agree, count as count_of

# How many files pass between calls to the cancel and progress callbacks: often enough
# to feel instant, rarely enough to cost nothing next to reading a header.
CHECK_EVERY = 64

KOHYA = "kohya"
EXPLICIT = "subset"


class DatasetError(ValueError):
    """The dataset as a whole cannot be used; the message says which setting to change."""


class ScanCancelled(Exception):
    """The caller's ``cancelled()`` returned True while scanning."""


@dataclass(frozen=True)
class ResolvedSubset:
    params: SubsetParams  # the subset's options, image_dir as the user gave it
    image_dir: Path  # absolute
    display_dir: str  # the folder as the user sees it: their root joined with the sub-folder
    name: str  # the folder's base name, e.g. "10_cat": the tag-frequency key
    source: str  # KOHYA (an N_words sub-folder) or EXPLICIT (listed in dataset.subsets)


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # absolute
    display_path: str  # display_dir joined with the file name
    size: tuple[int, int]  # as displayed, after EXIF orientation
    info: ImageInfo
    caption: str  # prefix, caption and suffix joined by spaces, as sd-scripts joins them
    caption_source: str  # "file", "class_tokens" or "none"
    subset_index: int
    is_reg: bool
    num_repeats: int


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    display_path: str
    reason: str


@dataclass
class ScanResult:
    subsets: list[ResolvedSubset]
    images: list[ImageRecord]
    skipped: list[SkippedFile]
    tag_frequency: dict[str, dict[str, int]]  # {subset folder name: {tag: count}}
    warnings: list[str]
    # The images of dataset.validation_dir (never trained on), when one is set.
    validation_images: list[ImageRecord] = field(default_factory=list)


def parse_kohya_folder_name(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens) of an ``N_words`` folder name, or None without a number.

    Python's int() decides, as in sd-scripts: "010_cat" is 10 repeats; "0_cat" parses to
    0, which the caller rejects. The class tokens keep their underscores: "1_cat_dog" ->
    "cat_dog", and "10_" has none.
    """
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return repeats, "_".join(tokens[1:])


def kohya_subsets(root: str | Path, *, is_reg: bool, template: SubsetParams | None = None,
                  warnings: list[str], base_dir: Path | None = None,
                  field: str = "dataset.subsets[0].image_dir") -> list[ResolvedSubset]:
    """One subset per ``N_words`` sub-folder of ``root``; ``template`` gives the other options."""
    shown_root = os.fspath(root)
    root_dir = _resolve_dir(shown_root, base_dir, field, "the folder that holds your N_name image folders")
    template = template if template is not None else SubsetParams()
    try:
        entries = sorted(os.scandir(root_dir), key=lambda entry: entry.name)
    except OSError as error:
        raise DatasetError(f"{field}: cannot read '{shown_root}' ({_why(error)})") from None
    # sd-scripts takes sub-folders in directory order, which differs between file systems;
    # sorting by name gives the same subsets (and the same shuffles) everywhere.
    subsets = []
    for entry in entries:
        if entry.name.startswith("."):  # .ipynb_checkpoints and the like are never concepts
            continue
        if not _is_dir(entry):
            continue
        subset = _kohya_subset(entry.name, shown_root, root_dir, is_reg, template, warnings)
        if subset is not None:
            subsets.append(subset)
    if any(is_image_file(e.name) and _is_file(e) for e in entries):
        warnings.append(f"images directly in {shown_root} are not used; put them in a N_name folder")
    if not subsets:
        warnings.append(f"{shown_root} has no N_name sub-folders (e.g. 10_cat); nothing is used from it")
    return subsets


def _kohya_subset(name: str, shown_root: str, root_dir: Path, is_reg: bool,
                  template: SubsetParams, warnings: list[str]) -> ResolvedSubset | None:
    parsed = parse_kohya_folder_name(name)
    if parsed is None:
        warnings.append(f"folder '{name}' in {shown_root} has no leading repeat count (N_name); skipped")
        return None
    repeats, class_tokens = parsed
    if repeats < 1:
        warnings.append(f"folder '{name}' in {shown_root} has {repeats} repeats; "
                        "it needs at least 1; skipped")
        return None
    display_dir = _join(shown_root, name)
    params = replace(template, image_dir=display_dir, kohya_layout=False, num_repeats=repeats,
                     class_tokens=class_tokens, is_reg=is_reg)
    return ResolvedSubset(params=params, image_dir=root_dir / name, display_dir=display_dir,
                          name=name, source=KOHYA)


def resolve_subsets(params: DatasetParams, base_dir: Path | None = None,
                    warnings: list[str] | None = None) -> list[ResolvedSubset]:
    """Every subset in the order listed, a folder in Kohya layout expanded into one subset
    per N_name sub-folder. Relative paths resolve against ``base_dir`` (the preset's folder)."""
    warnings = warnings if warnings is not None else []
    subsets: list[ResolvedSubset] = []
    for index, subset in enumerate(params.subsets):
        field = f"dataset.subsets[{index}].image_dir"
        if not subset.image_dir:
            raise DatasetError(f"{field} is empty; choose the folder of this subset's images")
        if subset.kohya_layout:
            subsets += kohya_subsets(subset.image_dir, is_reg=subset.is_reg, template=subset,
                                     warnings=warnings, base_dir=base_dir, field=field)
            continue
        image_dir = _resolve_dir(subset.image_dir, base_dir, field, "the folder of this subset's images")
        subsets.append(ResolvedSubset(params=subset, image_dir=image_dir, display_dir=subset.image_dir,
                                      name=image_dir.name, source=EXPLICIT))
    _warn_duplicates(subsets, warnings)
    return subsets


def _warn_duplicates(subsets: list[ResolvedSubset], warnings: list[str]) -> None:
    seen: dict[Path, str] = {}
    for subset in subsets:
        if subset.image_dir in seen:
            warnings.append(f"{subset.display_dir} is used by more than one subset "
                            f"(also as {seen[subset.image_dir]}); its images count twice")
        seen.setdefault(subset.image_dir, subset.display_dir)


def _resolve_dir(value: str, base_dir: Path | None, field: str, what: str) -> Path:
    try:
        path = resolve_builtin(value) if is_builtin(value) else Path(value).expanduser()
    except FileNotFoundError as error:  # the shipped resources themselves are missing
        raise DatasetError(f"{field}: {error}") from None
    if not path.is_absolute():
        path = (base_dir if base_dir is not None else Path.cwd()) / path
    # abspath, not resolve(): a symlinked folder keeps the name the user knows it by.
    path = Path(os.path.abspath(path))
    shown = f"'{value}'" if os.path.abspath(value) == str(path) else f"'{value}' ({path})"
    # os.path's checks answer False on any OS error (a locked parent included) instead of raising.
    if not os.path.exists(path):
        raise DatasetError(f"{field}: {shown} does not exist; choose {what}")
    if not os.path.isdir(path):
        raise DatasetError(f"{field}: {shown} is a file, not a folder; choose {what}")
    return path


def unusable_dataset_message(skipped: list[SkippedFile], warnings: list[str], shown: int = 5) -> str:
    """Why a dataset has no image to train on, naming the files and what to do: for the
    error that stops a run whose folders hold only broken or unreadable files."""
    if skipped:
        reasons = "; ".join(f"{s.display_path}: {s.reason}" for s in skipped[:shown])
        more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
        return (f"dataset.subsets: no usable images: {count_of(len(skipped), 'file')} skipped ({reasons}{more}); "
                "replace or remove the broken files, or choose another folder")
    detail = f" ({'; '.join(warnings)})" if warnings else ""
    return (f"dataset.subsets: no images to train on{detail}; add .png .jpg .jpeg .webp or .bmp "
            "images to the folders")


def scan_dataset(params: DatasetParams, base_dir: Path | None = None,
                 cancelled: Callable[[], bool] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """Find every image of every subset, read its size from the header and its caption."""
    warnings: list[str] = []
    subsets = resolve_subsets(params, base_dir, warnings)
    if not subsets:
        detail = f" ({'; '.join(warnings)})" if warnings else ""
        raise DatasetError(f"no image folder: add one to dataset.subsets{detail}")
    listings = []
    for subset in subsets:
        _check_cancelled(cancelled)
        listings.append(_list_images(subset, warnings))
    result = ScanResult(subsets=subsets, images=[], skipped=[], tag_frequency={}, warnings=warnings)
    counter = _Counter(sum(len(files) for files in listings), cancelled, progress)
    for index, (subset, files) in enumerate(zip(subsets, listings)):
        _scan_subset(index, subset, files, result, counter)
    counter.finish()
    if params.validation_dir:
        result.validation_images = _scan_validation_dir(params, subsets[0], base_dir, result)
    return result


def _scan_validation_dir(params: DatasetParams, first: ResolvedSubset, base_dir: Path | None,
                         result: ScanResult) -> list[ImageRecord]:
    """The validation folder's images, read with the first subset's caption options."""
    image_dir = _resolve_dir(params.validation_dir, base_dir, "dataset.validation_dir",
                             "a folder of validation images and captions, or leave it empty")
    options = replace(first.params, image_dir=params.validation_dir, kohya_layout=False,
                                  is_reg=False, num_repeats=1)
    subset = ResolvedSubset(params=options, image_dir=image_dir, display_dir=params.validation_dir,
                            name=image_dir.name, source=EXPLICIT)
    held = ScanResult(subsets=[subset], images=[], skipped=[], tag_frequency={}, warnings=[])
    _scan_subset(0, subset, _list_images(subset, held.warnings), held, _Counter(0, None, None))
    result.skipped += held.skipped
    result.warnings += held.warnings
    if not held.images:
        raise DatasetError(f"dataset.validation_dir: '{params.validation_dir}' has no usable images; "
                           "add images with captions, or leave it empty to use the validation split")
    return held.images


def _list_images(subset: ResolvedSubset, warnings: list[str]) -> list[str]:
    """Image files of one folder (not recursive), sorted by path as sd-scripts sorts."""
    try:
        with os.scandir(subset.image_dir) as entries:
            names = [e.name for e in entries if is_image_file(e.name) and _is_file(e)]
    except OSError as error:
        warnings.append(f"cannot read folder {subset.display_dir} ({_why(error)}); its images are not used")
        return []
    return sorted(names, key=lambda name: os.path.join(subset.image_dir, name))


class _Counter:
    """Calls the cancel and progress callbacks every CHECK_EVERY files."""

    def __init__(self, total: int, cancelled: Callable[[], bool] | None,
                 progress: Callable[[int, int], None] | None) -> None:
        self.total, self.done = total, 0
        self._cancelled, self._progress = cancelled, progress
        self._report()

    def step(self) -> None:
        if self.done % CHECK_EVERY == 0:
            _check_cancelled(self._cancelled)
            self._report()
        self.done += 1

    def finish(self) -> None:
        self._report()

    def _report(self) -> None:
        if self._progress is not None:
            self._progress(self.done, self.total)


def _check_cancelled(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise ScanCancelled("dataset scan cancelled")


def _scan_subset(index: int, subset: ResolvedSubset, names: list[str], result: ScanResult,
                 counter: _Counter) -> None:
    options = subset.params
    extension = _caption_extension(subset, result.warnings)
    base_captions: list[str] = []
    uncaptioned = 0
    for name in names:
        counter.step()
        path = subset.image_dir / name
        display_path = _join(subset.display_dir, name)
        try:
            info = read_image_info(path)
        except ImageProblem as problem:
            result.skipped.append(SkippedFile(path=path, display_path=display_path, reason=problem.reason))
            continue
        caption, source = _caption_for(path, display_path, extension, options, result.warnings)
        uncaptioned += source == "none"
        base_captions.append(caption)
        result.images.append(ImageRecord(
            path=path, display_path=display_path, size=info.size, info=info,
            caption=_with_prefix_suffix(caption, options), caption_source=source,
            subset_index=index, is_reg=options.is_reg, num_repeats=options.num_repeats))
    _summarise_subset(subset, names, base_captions, uncaptioned, result)


def _summarise_subset(subset: ResolvedSubset, names: list[str], base_captions: list[str],
                      uncaptioned: int, result: ScanResult) -> None:
    if not names:
        result.warnings.append(f"{subset.display_dir}: no images found (.png .jpg .jpeg .webp .bmp)")
    elif not base_captions:
        result.warnings.append(f"{subset.display_dir}: none of its {count_of(len(names), 'image')} can be used")
    if uncaptioned:
        result.warnings.append(f"{subset.display_dir}: {count_of(uncaptioned, 'image')} "
                               f"{agree(uncaptioned, 'has', 'have')} no caption file and "
                               "the subset has no class tokens; they train with an empty caption")
    if base_captions:  # sd-scripts records no tag frequency for a subset without images
        counts = result.tag_frequency.setdefault(subset.name, {})
        for tag, count in tag_frequency(base_captions).items():
            counts[tag] = counts.get(tag, 0) + count


def _caption_extension(subset: ResolvedSubset, warnings: list[str]) -> str:
    extension = subset.params.caption_extension
    if extension and not extension.startswith("."):
        # sd-scripts would look for "imgtxt"; nobody means that, so add the dot and say so.
        warnings.append(f"{subset.display_dir}: caption extension '{extension}' has no leading dot; "
                        f"using '.{extension}'")
        extension = "." + extension
    return extension


def _caption_for(path: Path, display_path: str, extension: str, options: SubsetParams,
                 warnings: list[str]) -> tuple[str, str]:
    """(caption without prefix/suffix, source) for one image."""
    if extension:
        caption_path = os.path.splitext(path)[0] + extension
        if os.path.isfile(caption_path):
            shown = os.path.splitext(display_path)[0] + extension
            try:
                text, warning = read_caption_file(caption_path)
            except OSError as error:
                warnings.append(f"{shown}: cannot read ({_why(error)}); using the class tokens")
            else:
                if warning:
                    warnings.append(f"{shown}: {warning}")
                return text, "file"
    if options.class_tokens:
        return options.class_tokens, "class_tokens"
    return "", "none"


def _with_prefix_suffix(caption: str, options: SubsetParams) -> str:
    # sd-scripts joins prefix + " " + caption + " " + suffix. Empty parts are left out so
    # an empty caption does not gain a stray space (the tokenizer would ignore it anyway).
    parts = (options.caption_prefix, caption, options.caption_suffix)
    return " ".join(part for part in parts if part)


def _join(directory: str, name: str) -> str:
    # builtin: references are resolved by splitting on "/", so never join them with "\".
    return f"{directory.rstrip('/')}/{name}" if is_builtin(directory) else os.path.join(directory, name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _why(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)
