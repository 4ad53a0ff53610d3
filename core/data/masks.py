"""Loss masks: one weight per pixel of a training image, 1 = trained, 0 = ignored.

As in sd-scripts, a mask comes from one of two places. A subset's mask folder
(sd-scripts' conditioning_data_dir) holds an image with the same file-name stem as each
training image and the same size; its red channel (a grey image's grey) 0..255 becomes
0..1. Or, with alpha_mask, the training image's own alpha channel is the mask, and an
image without one is trained everywhere. The mask goes through exactly the resize, crop and
flip of its image (core.data.images.prepare), so it stays on the pixels it was drawn over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.config.schema import DatasetParams, SubsetParams
from core.data.buckets import BucketAssignment
from core.data.imageinfo import is_image_file
from core.data.images import _ALPHA_MODES, ImageLoadError, decode_upright, prepare
from core.system.words import agree, count

if TYPE_CHECKING:
    import torch


class MaskError(ValueError):
    """Masks that cannot be used; the message names the files and what to do."""


def masking_on(dataset: DatasetParams) -> bool:
    """Whether the loss is weighted per pixel: masked_loss on, or any subset using its alpha
    channel (sd-scripts applies an alpha mask whenever one is in the batch)."""
    return dataset.masked_loss or any(s.alpha_mask for s in dataset.subsets)


def mask_source(options: SubsetParams, masked_loss: bool) -> str:
    """"folder", "alpha" or "" (trained everywhere) for an image of a subset."""
    if masked_loss and options.mask_dir:
        return "folder"
    if options.alpha_mask:
        return "alpha"
    return ""


def _stems(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.is_file() and is_image_file(entry):
            found.setdefault(entry.stem, entry)
    return found


def mask_files(mask_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The image files of a mask folder by file-name stem (the first by name for a stem)."""
    return _stems(Path(mask_dir).expanduser())


def find_mask(image_path: Path, mask_dir: str | os.PathLike[str]) -> Path | None:
    """The mask file of ``image_path`` in ``mask_dir``: any image file with its stem."""
    return _stems(Path(mask_dir).expanduser()).get(Path(image_path).stem)


def missing_masks(image_paths: list[Path], mask_dir: str | os.PathLike[str]) -> list[Path]:
    """The images of ``image_paths`` that have no mask in ``mask_dir``, in the given order."""
    stems = _stems(Path(mask_dir).expanduser())
    return [p for p in image_paths if Path(p).stem not in stems]


def missing_masks_message(missing: list[Path], mask_dir: str, shown: int = 5) -> str:
    names = ", ".join(Path(p).name for p in missing[:shown])
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return (f"{count(len(missing), 'image')} {agree(len(missing), 'has', 'have')} no mask in {mask_dir}: {names}{more}; add a mask image with "
            "the same file name stem for each (white = trained), or turn masked loss off")


def _open_upright(path: Path) -> Image.Image:
    try:
        return decode_upright(path, Image.Image.copy)
    except FileNotFoundError:
        raise ImageLoadError(path, "mask file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as error:
        raise ImageLoadError(path, f"the mask cannot be read ({error})") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or ("transparency" in image.info and image.mode in ("P", "L", "RGB"))


def load_mask_image(image_path: Path, image_size: tuple[int, int], options: SubsetParams,
                    masked_loss: bool) -> Image.Image | None:
    """The full-size mask of one image as a mode "L" image, or None where it is trained
    everywhere. Raises ImageLoadError (naming the mask) for a missing or wrongly sized mask."""
    source = mask_source(options, masked_loss)
    if source == "folder":
        found = find_mask(image_path, options.mask_dir)
        if found is None:
            raise ImageLoadError(image_path, f"it has no mask in {options.mask_dir} (a mask image with the "
                                             "same file name stem); add one or turn masked loss off")
        mask = _open_upright(found)
        if mask.size != tuple(image_size):
            raise ImageLoadError(found, f"the mask is {mask.size[0]}x{mask.size[1]} but its image "
                                        f"{Path(image_path).name} is {image_size[0]}x{image_size[1]}; "
                                        "a mask must have its image's size")
        return mask.convert("RGB").getchannel("R")
    if source == "alpha":
        image = _open_upright(Path(image_path))
        if not _has_alpha(image):
            return None
        return image.convert("RGBA").getchannel("A")
    return None


class AlphaMasks:
    """The alpha masks of one run's images, each decoded once: getting the alpha channel means
    decoding the whole image, which a run on cached latents would otherwise do for every image
    at every step. Keyed by the file's modification time and size, so an image edited during
    the run is read again; a fully opaque alpha is kept as None (trained everywhere, the same
    weights) so it takes no memory. Folder masks are read as before: they are small files."""

    def __init__(self) -> None:
        self._masks: dict[str, tuple[int, int, Image.Image | None]] = {}

    def load(self, image_path: Path, image_size: tuple[int, int], options: SubsetParams,
             masked_loss: bool) -> Image.Image | None:
        """:func:`load_mask_image`, an alpha mask from memory once read."""
        if mask_source(options, masked_loss) != "alpha":
            return load_mask_image(image_path, image_size, options, masked_loss)
        try:
            stat = os.stat(image_path)
        except OSError:  # let the load say what is wrong with the file
            return load_mask_image(image_path, image_size, options, masked_loss)
        key = str(image_path)
        kept = self._masks.get(key)
        if kept is not None and kept[:2] == (stat.st_mtime_ns, stat.st_size):
            return kept[2]
        mask = load_mask_image(image_path, image_size, options, masked_loss)
        if mask is not None and mask.getextrema() == (255, 255):
            mask = None
        self._masks[key] = (stat.st_mtime_ns, stat.st_size, mask)
        return mask


def mask_tensor(mask: Image.Image | None, assignment: BucketAssignment,
                crop_offset: tuple[int, int] | None, flip: bool) -> "torch.Tensor":
    """A [1, H, W] float32 mask in [0, 1] at the bucket's size, cropped and flipped as the
    image is (prepare does both); all ones for None."""
    import torch

    width, height = assignment.bucket
    if mask is None:
        return torch.ones((1, height, width), dtype=torch.float32)
    values = np.asarray(prepare(mask, assignment, crop_offset, flip), dtype=np.float32) / 255.0
    return torch.from_numpy(values).unsqueeze(0).contiguous()


def mask_summary(dataset: DatasetParams, base_dir: Path | None = None) -> str:
    """One line for `check`: masked loss on or off and, when on, how many images have a mask
    from a mask folder, from their alpha channel, and none (trained everywhere)."""
    from core.data.imageinfo import ImageProblem, read_image_info
    from core.data.scan import DatasetError, resolve_subsets

    if not masking_on(dataset):
        return "masked loss: off"
    try:
        subsets = resolve_subsets(dataset, base_dir)
    except DatasetError as error:
        return f"masked loss: on (masks not counted: {error})"
    folder = alpha = everywhere = missing = 0
    for subset in subsets:
        try:
            images = sorted(p for p in subset.image_dir.iterdir() if p.is_file() and is_image_file(p))
        except OSError:
            continue
        source = mask_source(subset.params, dataset.masked_loss)
        if source == "folder":
            lacking = len(missing_masks(images, subset.params.mask_dir))
            missing += lacking
            folder += len(images) - lacking
        elif source == "alpha":
            for path in images:
                try:
                    has = read_image_info(path).mode in _ALPHA_MODES
                except (ImageProblem, OSError):
                    has = False
                alpha += has
                everywhere += not has
        else:
            everywhere += len(images)
    parts = [f"{folder} from mask folders", f"{alpha} from the alpha channel", f"{everywhere} trained everywhere"]
    if missing:
        parts.append(f"{missing} MISSING their mask")
    return f"masked loss: on ({', '.join(parts)})"
