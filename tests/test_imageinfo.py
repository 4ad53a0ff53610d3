"""Image facts come from file headers only, and every unusable file says why."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile, WebPImagePlugin

import core.data.imageinfo as imageinfo
from core.data.imageinfo import ImageProblem, is_image_file, read_image_info

ORIENTATION = 0x0112


def _save(path: Path, mode: str = "RGB", size: tuple[int, int] = (64, 48),
          fmt: str | None = None, **options: object) -> Path:
    Image.new(mode, size).save(path, fmt, **options)
    return path


def _noisy(path: Path, fmt: str, size: tuple[int, int] = (96, 96)) -> Path:
    # Noise does not compress, so cutting the file in half really loses pixel data.
    Image.effect_noise(size, 64).convert("RGB").save(path, fmt)
    return path


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims any size (its pixel data is empty)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _reason(path: Path) -> str:
    with pytest.raises(ImageProblem) as caught:
        read_image_info(path)
    return caught.value.reason


@pytest.mark.parametrize("name, expected", [
    ("a.png", True), ("a.PNG", True), ("a.Jpg", True), ("a.jpeg", True), ("a.JPEG", True),
    ("a.webp", True), ("a.BMP", True), ("a.gif", False), ("a.txt", False), ("png", False),
    ("a.png.txt", False), ("a.tiff", False),
])
def test_is_image_file_matches_the_extensions_in_any_case(name: str, expected: bool) -> None:
    assert is_image_file(name) is expected


@pytest.mark.parametrize("name, fmt, expected_format", [
    ("a.png", "PNG", "PNG"), ("a.jpg", "JPEG", "JPEG"), ("a.webp", "WEBP", "WEBP"),
    ("a.bmp", "BMP", "BMP"),
])
def test_reads_size_format_and_file_facts(tmp_path: Path, name: str, fmt: str,
                                          expected_format: str) -> None:
    path = _save(tmp_path / name, fmt=fmt)
    info = read_image_info(path)
    assert info.size == info.stored_size == (64, 48)
    assert info.format == expected_format
    assert info.mode == "RGB"
    assert info.orientation == 1
    assert info.file_size == path.stat().st_size
    assert info.mtime_ns == path.stat().st_mtime_ns


@pytest.mark.parametrize("name, fmt, options", [
    ("a.png", "PNG", {}), ("b.png", "PNG", {"exif": _exif(6)}), ("a.jpg", "JPEG", {"exif": _exif(6)}),
    ("a.webp", "WEBP", {"exif": _exif(6)}), ("a.bmp", "BMP", {}),
])
def test_never_decodes_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fmt: str,
                              options: dict[str, object]) -> None:
    path = _save(tmp_path / name, fmt=fmt, **options)

    def refuse(self: object) -> None:
        raise AssertionError("pixel data was decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", refuse)
    assert read_image_info(path).stored_size == (64, 48)


@pytest.mark.parametrize("orientation, size", [(1, (64, 48)), (3, (64, 48)), (5, (48, 64)),
                                               (6, (48, 64)), (8, (48, 64))])
def test_exif_orientation_gives_the_displayed_size(tmp_path: Path, orientation: int,
                                                   size: tuple[int, int]) -> None:
    info = read_image_info(_save(tmp_path / "photo.jpg", exif=_exif(orientation)))
    assert info.orientation == orientation
    assert info.size == size
    assert info.stored_size == (64, 48)


def test_exif_orientation_in_png_and_webp_is_honoured(tmp_path: Path) -> None:
    assert read_image_info(_save(tmp_path / "a.png", exif=_exif(6))).size == (48, 64)
    assert read_image_info(_save(tmp_path / "a.webp", exif=_exif(6))).size == (48, 64)


def test_out_of_range_orientation_counts_as_none(tmp_path: Path) -> None:
    info = read_image_info(_save(tmp_path / "odd.jpg", exif=_exif(9)))
    assert info.orientation == 1 and info.size == (64, 48)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert _reason(path) == "empty file (0 bytes)"


@pytest.mark.parametrize("name, fmt_name", [("notes.png", "PNG"), ("notes.jpg", "JPEG"),
                                            ("notes.webp", "WebP")])
def test_text_file_with_an_image_extension(tmp_path: Path, name: str, fmt_name: str) -> None:
    path = tmp_path / name
    path.write_text("this is not an image\n")
    assert _reason(path) == f"not a valid {fmt_name} file"


def test_format_comes_from_the_content_not_the_name(tmp_path: Path) -> None:
    path = _save(tmp_path / "really_a_jpeg.png", fmt="JPEG")
    assert read_image_info(path).format == "JPEG"


@pytest.mark.parametrize("name, fmt, words", [("cut.png", "PNG", "truncated PNG"),
                                              ("cut.jpg", "JPEG", "truncated JPEG"),
                                              ("cut.webp", "WEBP", "WebP")])
def test_truncated_files(tmp_path: Path, name: str, fmt: str, words: str) -> None:
    path = _noisy(tmp_path / name, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert words in _reason(path)


def test_trailing_bytes_after_the_end_marker_are_tolerated(tmp_path: Path) -> None:
    png = _noisy(tmp_path / "a.png", "PNG")
    png.write_bytes(png.read_bytes() + b"\0" * 100)
    jpg = _noisy(tmp_path / "a.jpg", "JPEG")
    jpg.write_bytes(jpg.read_bytes() + b"\0" * 100)
    assert read_image_info(png).size == read_image_info(jpg).size == (96, 96)


def test_image_over_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageinfo, "MAX_IMAGE_PIXELS", 64 * 48 - 1)
    assert _reason(_save(tmp_path / "big.png")) == "too large to decode safely: 64 x 48"


def test_image_over_pillows_own_limit_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    reason = _reason(_png_header_only(tmp_path / "bomb.png", 20_000, 10_000))
    assert reason.startswith("too large to decode safely: 200,000,000 pixels")


def test_pillows_bomb_warning_is_not_printed_for_allowed_sizes(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "large.png", 12_000, 10_000)  # over Pillow's warning level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image_info(path).size == (12_000, 10_000)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_zero_width_image_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem):
        read_image_info(_png_header_only(tmp_path / "flat.png", 0, 10))


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "locked.png")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")
    # The tests may run as root, where chmod does not lock anyone out.
    monkeypatch.setattr(imageinfo, "open", denied, raising=False)
    assert _reason(path) == "cannot read: permission denied"


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "gone.png") == "file not found"


@pytest.mark.parametrize("name, mode, fmt", [
    ("cmyk.jpg", "CMYK", "JPEG"), ("deep.png", "I;16", "PNG"), ("palette.png", "P", "PNG"),
    ("alpha.png", "RGBA", "PNG"), ("grey_alpha.png", "LA", "PNG"), ("grey.jpg", "L", "JPEG"),
    ("bits.png", "1", "PNG"),
])
def test_unusual_modes_are_accepted_and_reported(tmp_path: Path, name: str, mode: str,
                                                 fmt: str) -> None:
    info = read_image_info(_save(tmp_path / name, mode=mode, fmt=fmt))
    assert info.mode == mode
    assert info.size == (64, 48)
