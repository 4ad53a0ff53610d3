"""Image facts read from file headers only: size, format, mode, EXIF orientation.

Planning a dataset (buckets, batches, steps) needs every image's size but none of its
pixels, so nothing here decodes pixel data: Pillow's ``Image.open`` parses the header
lazily and we stop there. That keeps a scan of thousands of images to seconds and
means a broken file is reported here, before training, with a reason a person can act on.

One deliberate difference from sd-scripts: sd-scripts takes the stored size and ignores
EXIF orientation, so a portrait photo saved as a rotated landscape JPEG is bucketed as
landscape. We honour the orientation tag (``ImageInfo.size`` is the size as displayed)
because the loader rotates the pixels the same way, and a bucket must fit what is trained.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Twice Pillow's default warning threshold, which is exactly where Pillow itself refuses
# to open an image; we refuse at the same point but with a message a person can act on.
MAX_IMAGE_PIXELS = 178_956_970

_ORIENTATION_TAG = 0x0112
# Orientations 5-8 are transposed (rotated by 90 or 270 degrees): width and height swap.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# A complete PNG ends with the IEND chunk: zero length, type, and its fixed CRC.
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
# How far from the end to look for the end marker; tolerates writers that pad or append.
_TAIL_BYTES = 1024

_FORMAT_BY_EXTENSION = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG",
                        ".webp": "WebP", ".bmp": "BMP"}


class ImageProblem(ValueError):
    """A file that cannot be used as a training image; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    size: tuple[int, int]  # (w, h) as displayed, after EXIF orientation
    stored_size: tuple[int, int]  # (w, h) as stored in the file
    format: str  # Pillow's format name: "PNG", "JPEG", "WEBP", "BMP", ...
    mode: str  # Pillow mode; CMYK, I;16, P, ... are fine, the loader converts them
    orientation: int  # EXIF orientation 1..8, 1 when absent
    mtime_ns: int
    file_size: int


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the name has one of the image extensions, in any letter case."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def read_image_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Read an image's facts from its header; raise :class:`ImageProblem` if unusable."""
    file_stat = _stat(path)
    expected = _FORMAT_BY_EXTENSION.get(os.path.splitext(os.fspath(path))[1].lower())
    try:
        with open(path, "rb") as fp:
            stored_size, fmt, mode, orientation = _read_header(fp, expected)
            _check_complete(fp, fmt, file_stat.st_size)
    except PermissionError:
        raise ImageProblem("cannot read: permission denied") from None
    except OSError as error:  # Pillow's own errors are handled inside; these are I/O
        raise ImageProblem(f"cannot read: {error.strerror or error}") from None
    w, h = stored_size
    size = (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)
    return ImageInfo(size=size, stored_size=stored_size, format=fmt, mode=mode,
                     orientation=orientation, mtime_ns=file_stat.st_mtime_ns,
                     file_size=file_stat.st_size)


def _stat(path: str | os.PathLike[str]) -> os.stat_result:
    try:
        file_stat = os.stat(path)
    except FileNotFoundError:
        raise ImageProblem("file not found") from None
    except PermissionError:
        raise ImageProblem("cannot read: permission denied") from None
    except OSError as error:
        raise ImageProblem(f"cannot read: {error.strerror or error}") from None
    if not stat.S_ISREG(file_stat.st_mode):
        raise ImageProblem("not a regular file")
    if file_stat.st_size == 0:
        raise ImageProblem("empty file (0 bytes)")
    return file_stat


def _read_header(fp: BinaryIO, expected: str | None) -> tuple[tuple[int, int], str, str, int]:
    """Open lazily and return (stored size, format, mode, orientation); never decodes."""
    invalid = f"not a valid {expected} file" if expected else "not an image file"
    try:
        # Pillow warns (through the warnings module) between its limit and twice that;
        # our own check below reports those sizes, so the warning would only be noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as image:
                size = (int(image.size[0]), int(image.size[1]))
                fmt = image.format or "unknown"
                mode = image.mode
                orientation = _orientation(image)
    except Image.DecompressionBombError as error:
        raise ImageProblem(f"too large to decode safely: {_pixels_in(error)}") from None
    except UnidentifiedImageError:
        raise ImageProblem(invalid) from None
    except PermissionError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, struct.error) as error:
        # Plugins raise these for headers that start right and then go wrong.
        raise ImageProblem(f"{invalid} ({error})") from None
    _check_size(size)
    return size, fmt, mode, orientation


def _orientation(image: Image.Image) -> int:
    # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk after the
    # pixel data; only an eXIf chunk seen in the header is used, so PNGs stay header-only.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block must not cost the image: Pillow's loader
        return 1  # would not rotate it either
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _pixels_in(error: Exception) -> str:
    # Pillow stops before it tells us the size; its message carries the pixel count.
    words = str(error).split()
    for before, word in zip(words, words[1:]):
        if word == "pixels)" and before.lstrip("(").isdigit():
            return f"{int(before.lstrip('(')):,} pixels (limit {MAX_IMAGE_PIXELS:,})"
    return f"more than {MAX_IMAGE_PIXELS:,} pixels"


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageProblem(f"has no pixels: {w} x {h}")
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageProblem(f"too large to decode safely: {w} x {h}")


def _check_complete(fp: BinaryIO, fmt: str, file_size: int) -> None:
    """Catch truncated files from their last bytes, without decoding them."""
    if fmt == "PNG":
        if _PNG_IEND not in _tail(fp, file_size):
            raise ImageProblem("truncated PNG file (no IEND chunk at the end)")
    elif fmt == "JPEG":
        if _JPEG_EOI not in _tail(fp, file_size):
            raise ImageProblem("truncated JPEG file (no end-of-image marker)")
    elif fmt == "WEBP":
        _check_riff_length(fp, file_size)


def _tail(fp: BinaryIO, file_size: int) -> bytes:
    fp.seek(max(0, file_size - _TAIL_BYTES))
    return fp.read(_TAIL_BYTES)


def _check_riff_length(fp: BinaryIO, file_size: int) -> None:
    # A WebP file is one RIFF chunk whose header states its length: a shorter file is cut.
    fp.seek(4)
    declared = fp.read(4)
    if len(declared) == 4 and struct.unpack("<I", declared)[0] + 8 > file_size:
        raise ImageProblem("truncated WebP file (shorter than its header says)")

