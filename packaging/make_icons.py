"""Draw LoRA Kiln's icon: a brick kiln dome with a flame in its mouth.

Writes resources/icons/lorakiln.png (256 px, the window icon and the Linux desktop icon)
and resources/icons/lorakiln.ico (16-256 px, the Windows executable's icon). The shapes
are drawn at 4x and scaled down, which gives smooth edges without an anti-aliasing
library. Run it again after changing the drawing:

    .venv/bin/python packaging/make_icons.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SIZE = 256
SCALE = 4
ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]

BACKGROUND = (38, 34, 46, 255)  # charcoal with a little violet, readable on light and dark panels
KILN = (184, 92, 56, 255)  # terracotta
KILN_SHADE = (150, 70, 42, 255)
MORTAR = (120, 54, 32, 255)
MOUTH = (24, 18, 22, 255)
FLAME_OUTER = (255, 128, 24, 255)
FLAME_INNER = (255, 214, 80, 255)


def _box(*values: float) -> list[float]:
    return [v * SCALE for v in values]


def _flame(draw: ImageDraw.ImageDraw, cx: float, base: float, width: float, height: float,
           colour: tuple[int, int, int, int]) -> None:
    """A teardrop: a round bottom and a pointed top, as a polygon traced around the outline."""
    points = []
    for i in range(61):
        t = i / 60 * 2 * math.pi
        # x follows a circle; y stretches the upper half into a point (sin^3 narrows the tip)
        x = cx + (width / 2) * math.sin(t) * (1 - 0.45 * max(0.0, math.cos(t)) ** 2)
        lift = height - width / 2
        y = base - width / 2 - (width / 2) * math.cos(t) - (lift * max(0.0, math.cos(t)) ** 3)
        points.append((x * SCALE, y * SCALE))
    draw.polygon(points, fill=colour)


def draw_icon() -> Image.Image:
    big = Image.new("RGBA", (SIZE * SCALE, SIZE * SCALE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(big)
    draw.rounded_rectangle(_box(8, 8, 248, 248), radius=48 * SCALE, fill=BACKGROUND)
    # The kiln: a dome on a low plinth, with brick courses drawn as mortar lines.
    draw.rectangle(_box(40, 196, 216, 220), fill=KILN_SHADE)
    draw.pieslice(_box(40, 60, 216, 332), 180, 360, fill=KILN)
    draw.rectangle(_box(40, 150, 216, 198), fill=KILN)
    for y in (104, 130, 156, 180):
        half = 88 * math.sqrt(max(0.0, 1 - ((196 - y) / 136) ** 2))  # the dome's half-width at y
        draw.line(_box(128 - half, y, 128 + half, y), fill=MORTAR, width=3 * SCALE)
    draw.arc(_box(40, 60, 216, 332), 180, 360, fill=MORTAR, width=3 * SCALE)
    # The mouth and the fire inside it.
    draw.pieslice(_box(90, 132, 166, 236), 180, 360, fill=MOUTH)
    draw.rectangle(_box(90, 183, 166, 198), fill=MOUTH)
    _flame(draw, 128, 198, 48, 62, FLAME_OUTER)
    _flame(draw, 128, 198, 26, 36, FLAME_INNER)
    # A faint glow above the dome's vent.
    glow = Image.new("RGBA", big.size, (0, 0, 0, 0))
    ImageDraw.Draw(glow).ellipse(_box(112, 40, 144, 66), fill=(255, 150, 40, 150))
    big = Image.alpha_composite(big, glow.filter(ImageFilter.GaussianBlur(6 * SCALE)))
    draw = ImageDraw.Draw(big)
    draw.rectangle(_box(118, 56, 138, 68), fill=KILN_SHADE)
    return big.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main() -> int:
    ICONS.mkdir(parents=True, exist_ok=True)
    icon = draw_icon()
    icon.save(ICONS / "lorakiln.png", optimize=True)
    icon.save(ICONS / "lorakiln.ico", sizes=ICO_SIZES)
    print(f"wrote {ICONS / 'lorakiln.png'} and {ICONS / 'lorakiln.ico'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
