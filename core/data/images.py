"""Loading one training image to pixels: orientation, colour mode, resize, crop, flip.

The plan (core.data.plan) decided each image's bucket, resized size and crop from its header;
this module turns the file into exactly those pixels. Sizes are "as displayed": the EXIF
orientation is applied here just as core.data.imageinfo applied it to the size, so the two
agree and a rotated phone photo trains upright.

One deliberate difference from sd-scripts: its ``convert("RGB")`` drops the alpha channel,
which turns transparent backgrounds black (their colour values are usually 0). We composite
transparency onto white instead, which is what a person sees in an image viewer.
"""

from __future__ import annotations

import os
import random
import struct
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.data.buckets import BucketAssignment

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

Size = tuple[int, int]

_ORIENTATION_TAG = 0x0112
# The transpose that undoes each EXIF orientation (2..8; 1 is already upright).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_WHITE = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """An image file could not be turned into pixels; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str | None = None) -> None:
        if reason is None:
            # Rebuilt from a message alone: torch's DataLoader re-raises a worker's error as
            # type(error)(text with the worker's traceback). Keep the original last line, so
            # the error still names the file, without the traceback in the person's summary.
            text = os.fspath(path)
            lines = [line for line in text.splitlines() if f"{type(self).__name__}: " in line]
            message = lines[-1].split(f"{type(self).__name__}: ", 1)[1] if lines else text
            super().__init__(message)
            self.path, self.reason = "", message
            return
        super().__init__(f"cannot load image {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        # Pickled (to or from another process) by its two parts, not by the message.
        return type(self), ((self.path, self.reason) if self.path else (str(self),))


def conversion_note(mode: str) -> str | None:
    """A short note for a Pillow mode that loading changes visibly, else None."""
    if mode in ("RGB", "L", "1"):
        return None
    if mode in _ALPHA_MODES:
        return "transparency flattened onto white"
    if mode == "P":
        return "palette converted to RGB (any transparency flattened onto white)"
    if mode == "CMYK":
        return "CMYK converted to RGB"
    if mode in _SIXTEEN_BIT_MODES:
        return "16-bit reduced to 8-bit"
    return f"{mode} converted to RGB"


def decode_upright(path: str | os.PathLike[str], convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``convert`` of the decoded image at ``path``, turned upright by its EXIF orientation.
    Pillow's errors pass through: each caller names them for its own kind of file."""
    # core.data.imageinfo accepts sizes up to twice Pillow's warning threshold and reports
    # larger ones itself, so the warning in between is noise here too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            orientation = _header_orientation(image)
            image.load()
            converted = convert(image)
    transpose = _UPRIGHT.get(orientation)
    return converted.transpose(transpose) if transpose is not None else converted


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image, or raise :class:`ImageLoadError`."""
    try:
        return decode_upright(path, _to_rgb)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except Image.DecompressionBombError:
        raise ImageLoadError(path, "too large to decode safely") from None
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file Pillow can read") from None
    except (OSError, ValueError, EOFError, SyntaxError, struct.error) as error:
        # Truncated or corrupt pixel data surfaces here, from whichever plugin decoded it.
        raise ImageLoadError(path, f"the file is damaged or truncated ({error})") from None


def _header_orientation(image: Image.Image) -> int:
    # The same rule as core.data.imageinfo, so the pixels come out at the planned size: for a
    # PNG only an eXIf chunk seen in the header counts (one after the pixel data is ignored).
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block leaves the image as stored, as imageinfo does
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image from a loaded image of any mode."""
    mode = image.mode
    if mode in _ALPHA_MODES or ("transparency" in image.info and mode in ("P", "L", "RGB")):
        return _flatten_onto_white(image.convert("RGBA"))
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_to_eight(image).convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def _flatten_onto_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_to_eight(image: Image.Image) -> Image.Image:
    # Keep the top 8 bits (65535 -> 255, 32768 -> 128); Pillow's own conversion clips
    # instead, which turns nearly every 16-bit grey to white. Mode "I" holds 32-bit ints;
    # in a training image they come from 16-bit greyscale, so they are read in that range.
    values = np.asarray(image).astype(np.int64)
    eight = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(eight)


def prepare(image: Image.Image, assignment: BucketAssignment, crop_offset: tuple[int, int] | None,
            flip: bool) -> Image.Image:
    """Resize to the planned size, crop to the bucket and optionally mirror left-right.

    ``crop_offset`` is the (left, top) of a random crop; None takes the planned centre crop.
    """
    resized = _resize(image, assignment.resized)
    bw, bh = assignment.bucket
    if crop_offset is None:
        box = assignment.crop
    else:
        left, top = crop_offset
        box = (left, top, left + bw, top + bh)
    rw, rh = assignment.resized
    if box[0] < 0 or box[1] < 0 or box[2] > rw or box[3] > rh:
        raise ValueError(f"crop box {box} lies outside the resized image {rw}x{rh}")
    cropped = resized.crop(box)
    if flip:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return cropped


def _resize(image: Image.Image, size: Size) -> Image.Image:
    if image.size == size:
        return image
    w, h = image.size
    # Area averaging when shrinking (sd-scripts uses cv2's INTER_AREA) keeps fine detail
    # from aliasing; Lanczos when enlarging, as sd-scripts does.
    shrinking = size[0] <= w and size[1] <= h
    method = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
    return image.resize(size, method)


def random_crop_offset(resized: Size, bucket: Size, rng: random.Random) -> tuple[int, int]:
    """A uniform (left, top) for a bucket-sized window inside the resized image."""
    trim_w = resized[0] - bucket[0]
    trim_h = resized[1] - bucket[1]
    if trim_w < 0 or trim_h < 0:
        raise ValueError(f"resized size {resized} does not cover bucket {bucket}")
    return rng.randint(0, trim_w), rng.randint(0, trim_h)


def to_tensor(image: Image.Image) -> "torch.Tensor":
    """An RGB image as a float32 [3, H, W] tensor scaled to [-1, 1], as the VAE expects."""
    # The uint8 -> float32 conversion makes a fresh, writable array that torch can share.
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.float32)
    import torch  # here, so planning (which needs conversion_note) never loads torch

    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    return tensor / 127.5 - 1.0
