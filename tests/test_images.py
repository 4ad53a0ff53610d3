"""Loading training images: orientation, colour modes, damaged files, resize, crop, flip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data.buckets import BucketAssigner, BucketAssignment, BucketSettings, centre_crop_box
from core.data.imageinfo import read_image_info
from core.data.images import (ImageLoadError, conversion_note, load_rgb, prepare, random_crop_offset,
                         to_tensor)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _stripes(widths_and_colours: list[tuple[int, tuple[int, int, int]]], height: int) -> Image.Image:
    """Vertical stripes, left to right, so a crop's position shows in its colours."""
    total = sum(width for width, _ in widths_and_colours)
    image = Image.new("RGB", (total, height))
    left = 0
    for width, colour in widths_and_colours:
        image.paste(colour, (left, 0, left + width, height))
        left += width
    return image


def _assignment(resized: tuple[int, int], bucket: tuple[int, int]) -> BucketAssignment:
    return BucketAssignment(bucket=bucket, resized=resized, crop=centre_crop_box(resized, bucket),
                            ar_error=0.0, upscaled=False)


def _dominant(pixel: tuple[int, int, int]) -> int:
    return int(np.argmax(pixel))


def test_exif_rotated_jpeg_loads_upright_at_the_planned_size(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))  # the stored left half is red
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    stored.save(path, exif=exif, quality=95)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == read_image_info(path).size == (20, 40)
    # Rotating clockwise moves the stored left half to the top.
    assert _dominant(image.getpixel((10, 5))) == 0
    assert _dominant(image.getpixel((10, 35))) == 2


@pytest.mark.parametrize("mode, suffix", [("RGBA", ".png"), ("LA", ".png"), ("RGBA", ".webp")])
def test_transparent_pixels_become_white(tmp_path: Path, mode: str, suffix: str) -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 0, 0, 255))
    path = tmp_path / f"cut_out{suffix}"
    rgba.convert(mode).save(path, lossless=True)
    image = load_rgb(path)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((3, 3)) == (0, 0, 0)


def test_palette_transparency_becomes_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    loaded = load_rgb(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == RED


def test_cmyk_jpeg_loads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    image = load_rgb(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))
    assert red > 200 and green < 50 and blue < 50


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.frombytes("I;16", (3, 1), values.tobytes()).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_images_load_as_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "grey.png"
    Image.new(mode, (2, 2), 255 if mode == "L" else 1).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_raises_image_load_error_naming_the_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageLoadError, match=f"cut{suffix}") as caught:
        load_rgb(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == str(path)


def test_missing_file_raises_image_load_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="not found"):
        load_rgb(tmp_path / "gone.png")


@pytest.mark.parametrize("mode, note", [
    ("RGB", None), ("L", None), ("RGBA", "transparency flattened onto white"),
    ("LA", "transparency flattened onto white"), ("CMYK", "CMYK converted to RGB"),
    ("I;16", "16-bit reduced to 8-bit"), ("I;16B", "16-bit reduced to 8-bit"),
])
def test_conversion_note(mode: str, note: str | None) -> None:
    assert conversion_note(mode) == note


@pytest.mark.parametrize("size", [(300, 150), (70, 35)], ids=["shrink", "enlarge"])
def test_prepare_gives_exactly_the_bucket_size(size: tuple[int, int]) -> None:
    assigner = BucketAssigner(BucketSettings(resolution=(128, 128), min_bucket_reso=64,
                                             max_bucket_reso=256))
    assignment = assigner.assign(*size)
    image = Image.new("RGB", size, GREEN)
    assert prepare(image, assignment, None, False).size == assignment.bucket


def test_prepare_takes_the_planned_centre_crop() -> None:
    image = _stripes([(16, RED), (64, GREEN), (16, BLUE)], 64)
    out = prepare(image, _assignment((96, 64), (64, 64)), None, False)
    assert (np.asarray(out) == GREEN).all()


def test_prepare_takes_a_random_crop_at_the_offset() -> None:
    image = _stripes([(16, RED), (64, GREEN), (16, BLUE)], 64)
    out = prepare(image, _assignment((96, 64), (64, 64)), (32, 0), False)
    assert out.getpixel((0, 0)) == GREEN
    assert out.getpixel((47, 0)) == GREEN
    assert out.getpixel((48, 0)) == BLUE


def test_prepare_mirrors_when_flipped() -> None:
    image = _stripes([(32, RED), (32, BLUE)], 64)
    out = prepare(image, _assignment((64, 64), (64, 64)), None, True)
    assert out.getpixel((0, 0)) == BLUE
    assert out.getpixel((63, 0)) == RED


def test_shrinking_averages_areas() -> None:
    row = np.array([[0, 200, 100, 100, 40, 60]], dtype=np.uint8)
    image = Image.fromarray(np.stack([row] * 3, axis=-1))
    out = prepare(image, _assignment((3, 1), (3, 1)), None, False)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [100, 100, 50]


def test_random_crop_offsets_are_uniform_over_the_whole_range() -> None:
    rng = random.Random(0)
    offsets = {random_crop_offset((66, 67), (64, 64), rng) for _ in range(300)}
    assert offsets == {(x, y) for x in range(3) for y in range(4)}


def test_to_tensor_scales_to_minus_one_to_one_channels_first() -> None:
    image = _stripes([(1, RED), (1, (255, 255, 255))], 2)
    tensor = to_tensor(image)
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, 2, 2)
    assert tensor[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert tensor[:, 0, 1].tolist() == [1.0, 1.0, 1.0]
