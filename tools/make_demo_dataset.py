#!/usr/bin/env python3
"""Generate the built-in demo dataset in resources/demo/ (run by hand; output is committed).

Small drawn pictures of pottery in Kohya's ``N_concept`` layout, in the sizes and shapes a
real dataset has: 862x862 squares, portraits, landscapes, 16:9, one photo stored sideways
with an EXIF orientation tag, one image below the minimum bucket size, a few formats, and
a few images without a caption file (they fall back to the folder's class tokens).
Deterministic: the same script writes the same files.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent / "resources" / "demo"

GLAZES = {"blue glaze": (52, 92, 170), "celadon glaze": (140, 180, 150), "red glaze": (170, 50, 40),
          "ochre glaze": (200, 150, 60), "black glaze": (35, 35, 40), "white glaze": (235, 232, 220)}
BACKGROUNDS = {"white background": (246, 244, 240), "grey background": (150, 150, 155),
               "wooden table": (140, 100, 65), "dark background": (30, 28, 34)}

# (file name, width, height, has caption file); sizes as displayed
VASES = [
    ("vase_01.png", 862, 862, True), ("vase_02.png", 862, 862, True), ("vase_03.jpg", 862, 862, True),
    ("vase_04.png", 512, 768, True), ("vase_05.jpg", 600, 900, True), ("vase_06.png", 768, 512, True),
    ("vase_07.webp", 1024, 576, True), ("vase_08_rotated.jpg", 480, 640, True),
    ("vase_09.jpg", 900, 1200, True), ("vase_10.png", 1200, 800, True), ("vase_11.PNG", 700, 700, False),
    ("vase_12.jpg", 500, 1000, True), ("vase_13.png", 1280, 720, True), ("vase_14.jpg", 832, 1216, True),
    ("vase_15.png", 400, 600, False), ("vase_16_tiny.png", 120, 100, True),
]
BOWLS = [
    ("bowl_01.png", 862, 862, True), ("bowl_02.jpg", 1000, 750, True), ("bowl_03.jpg", 750, 1000, True),
    ("bowl_04.png", 960, 540, True), ("bowl_05.png", 512, 512, True), ("bowl_06.webp", 1100, 620, True),
    ("bowl_07.png", 300, 300, True), ("bowl_08.bmp", 256, 192, True),
]
REG = [("reg_vase_01.png", 512, 512, True), ("reg_vase_02.png", 512, 768, True),
       ("reg_vase_03.jpg", 768, 512, True), ("reg_vase_04.png", 640, 640, True)]


def draw_vase(draw: ImageDraw.ImageDraw, w: int, h: int, colour: tuple[int, int, int], rng: random.Random) -> None:
    cx, base = w / 2, h * rng.uniform(0.82, 0.9)
    body_w, body_h = min(w, h) * rng.uniform(0.35, 0.5), h * rng.uniform(0.35, 0.5)
    neck_w = body_w * rng.uniform(0.25, 0.4)
    top = base - body_h - h * 0.15
    draw.ellipse([cx - body_w / 2, base - body_h, cx + body_w / 2, base], fill=colour)
    draw.rectangle([cx - neck_w / 2, top, cx + neck_w / 2, base - body_h * 0.8], fill=colour)
    draw.ellipse([cx - neck_w * 0.8, top - h * 0.02, cx + neck_w * 0.8, top + h * 0.03], fill=colour)
    shade = tuple(max(0, c - 40) for c in colour)
    draw.ellipse([cx - body_w * 0.3, base - body_h * 0.7, cx - body_w * 0.1, base - body_h * 0.3], fill=shade)


def draw_bowl(draw: ImageDraw.ImageDraw, w: int, h: int, colour: tuple[int, int, int], rng: random.Random) -> None:
    cx, cy = w / 2, h * rng.uniform(0.5, 0.6)
    bw, bh = min(w, h * 1.6) * rng.uniform(0.5, 0.7), h * rng.uniform(0.25, 0.35)
    draw.chord([cx - bw / 2, cy - bh, cx + bw / 2, cy + bh], 0, 180, fill=colour)
    rim = tuple(min(255, c + 30) for c in colour)
    draw.ellipse([cx - bw / 2, cy - bh * 0.18, cx + bw / 2, cy + bh * 0.18], fill=rim)


def make_image(kind: str, w: int, h: int, rng: random.Random) -> tuple[Image.Image, str]:
    glaze = rng.choice(sorted(GLAZES))
    background = rng.choice(sorted(BACKGROUNDS))
    image = Image.new("RGB", (w, h), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    if background == "wooden table":
        draw.rectangle([0, int(h * 0.8), w, h], fill=(110, 75, 45))
    (draw_vase if kind == "vase" else draw_bowl)(draw, w, h, GLAZES[glaze], rng)
    caption = f"kilnstyle, {kind}, {glaze}, {background}"
    return image, caption


def save(image: Image.Image, path: Path, rotated: bool) -> None:
    suffix = path.suffix.lower()
    if rotated:
        # Stored sideways (landscape) with EXIF orientation 6: viewers turn it upright.
        stored = image.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(path, "JPEG", quality=85, exif=exif)
    elif suffix in (".jpg", ".jpeg"):
        image.save(path, "JPEG", quality=85)
    elif suffix == ".webp":
        image.save(path, "WEBP", quality=80)
    elif suffix == ".bmp":
        image.save(path, "BMP")
    else:
        image.save(path, "PNG", optimize=True)


def write_folder(folder: Path, kind: str, entries: list[tuple[str, int, int, bool]], rng: random.Random) -> None:
    folder.mkdir(parents=True)
    for name, w, h, has_caption in entries:
        image, caption = make_image(kind, w, h, rng)
        path = folder / name
        save(image, path, rotated="rotated" in name)
        if has_caption:
            path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")


def main() -> None:
    rng = random.Random(20261125)
    if ROOT.exists():
        shutil.rmtree(ROOT)
    write_folder(ROOT / "dataset" / "4_kilnstyle vase", "vase", VASES, rng)
    write_folder(ROOT / "dataset" / "2_kilnstyle bowl", "bowl", BOWLS, rng)
    write_folder(ROOT / "reg" / "1_vase", "vase", REG, rng)
    (ROOT / "prompts.txt").write_text(
        "# Sample prompts for the demo project (Kohya syntax)\n"
        "kilnstyle, vase, blue glaze, white background --w 256 --h 256 --s 20 --d 1\n"
        "kilnstyle, bowl, red glaze, wooden table --w 256 --h 192 --s 20 --d 2\n",
        encoding="utf-8")
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"wrote {ROOT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
