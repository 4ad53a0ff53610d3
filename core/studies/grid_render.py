"""Drawing a comparison grid: a title, a header row of column labels, a left column of row
labels, and the images, each centred in its cell.

The layout is a pure function of the cell sizes and the texts (:func:`layout_grid`), so
the size of a grid is known before anything is generated, and tests can find every cell.
A column is as wide as its widest image and a row as tall as its tallest, so columns of
different resolutions line up; smaller images are centred on the background.

Text uses Pillow's built-in font at a size that follows the image size (small images get
12 px text, 512 px images about 21 px), wrapped to the space it has and cut with "..."
when it would need more lines than allowed, so a long prompt never widens its column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # pragma: no cover - typing only
    from PIL.ImageFont import FreeTypeFont, ImageFont as BitmapFont

    Font = FreeTypeFont | BitmapFont

BACKGROUND = (255, 255, 255)
TEXT = (24, 24, 24)
MAX_TITLE_LINES = 3
MAX_HEADER_LINES = 4
ELLIPSIS = "..."  # Pillow's default font may lack U+2026


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes, in pixels; boxes are (left, top, width, height)."""

    width: int
    height: int
    font_size: int
    line_height: int
    title_lines: tuple[str, ...]
    title_top: int
    header_lines: tuple[tuple[str, ...], ...]  # per column
    header_top: int
    header_height: int
    header_gap: int  # between the labels and the images
    label_left: int
    label_width: int
    row_label_lines: tuple[tuple[str, ...], ...]  # per row
    column_left: tuple[int, ...]
    column_width: tuple[int, ...]
    row_top: tuple[int, ...]
    row_height: tuple[int, ...]

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        return self.column_left[column], self.row_top[row], self.column_width[column], self.row_height[row]

    def image_origin(self, row: int, column: int, size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of an image of ``size`` centred in its cell."""
        left, top, width, height = self.cell_box(row, column)
        return left + (width - size[0]) // 2, top + (height - size[1]) // 2


def font_size_for(cell_sizes: list[list[tuple[int, int]]]) -> int:
    """About 1/24 of the largest image side, between 12 and 40 px."""
    largest = max((max(w, h) for row in cell_sizes for w, h in row), default=512)
    return max(12, min(40, round(largest / 24)))


@lru_cache(maxsize=8)
def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _text_width(text: str, font: Font) -> int:
    left, _, right, _ = font.getbbox(text) if text else (0, 0, 0, 0)
    return int(right - left)


def _break_word(word: str, font: Font, width: int) -> list[str]:
    """A word too wide for one line, cut into pieces that fit (one character at least)."""
    pieces, current = [], ""
    for char in word:
        if current and _text_width(current + char, font) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    return pieces + [current] if current else pieces


def wrap_text(text: str, font: Font, width: int, max_lines: int) -> tuple[str, ...]:
    """``text`` in lines no wider than ``width``; explicit newlines kept; "..." when cut."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if _text_width(candidate, font) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            pieces = _break_word(word, font, width) if _text_width(word, font) > width else [word]
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    if len(lines) <= max_lines:
        return tuple(lines)
    kept = lines[:max_lines]
    last = kept[-1]
    while last and _text_width(last + ELLIPSIS, font) > width:
        last = last[:-1]
    kept[-1] = last.rstrip() + ELLIPSIS
    return tuple(kept)


def layout_grid(cell_sizes: list[list[tuple[int, int]]], row_labels: list[str], column_labels: list[str],
                title: str = "") -> GridLayout:
    """The layout of a grid whose image at [row][column] has size (width, height)."""
    if not cell_sizes or not cell_sizes[0]:
        raise ValueError("a grid needs at least one row and one column")
    n_rows, n_columns = len(cell_sizes), len(cell_sizes[0])
    if len(row_labels) != n_rows or len(column_labels) != n_columns or any(len(r) != n_columns for r in cell_sizes):
        raise ValueError("the labels do not match the cells")
    size = font_size_for(cell_sizes)
    font = _font(size)
    line = size + max(2, size // 4)
    pad = max(4, size // 2)
    gap = max(2, size // 4)
    column_width = tuple(max(row[c][0] for row in cell_sizes) for c in range(n_columns))
    row_height = tuple(max(h for _, h in row) for row in cell_sizes)

    widest_label = max((_text_width(label, font) for label in row_labels), default=0)
    label_width = min(widest_label, 16 * size)  # longer labels wrap
    row_label_lines = tuple(wrap_text(label, font, max(label_width, size), max(1, row_height[r] // line))
                            for r, label in enumerate(row_labels))
    column_left, x = [], pad + label_width + (gap if label_width else 0)
    for width in column_width:
        column_left.append(x)
        x += width + gap
    width = x - gap + pad

    title_lines = wrap_text(title, font, width - 2 * pad, MAX_TITLE_LINES) if title else ()
    title_top = pad
    header_top = title_top + len(title_lines) * line + (pad if title_lines else 0)
    header_lines = tuple(wrap_text(label, font, column_width[c], MAX_HEADER_LINES)
                         for c, label in enumerate(column_labels))
    header_height = max(len(lines) for lines in header_lines) * line + gap
    row_top, y = [], header_top + header_height
    for height in row_height:
        row_top.append(y)
        y += height + gap
    return GridLayout(width=width, height=y - gap + pad, font_size=size, line_height=line,
                      title_lines=title_lines, title_top=title_top, header_lines=header_lines,
                      header_top=header_top, header_height=header_height, header_gap=gap, label_left=pad,
                      label_width=label_width, row_label_lines=row_label_lines,
                      column_left=tuple(column_left), column_width=column_width, row_top=tuple(row_top),
                      row_height=row_height)


def draw_grid(cells: list[list[Image.Image]], layout: GridLayout) -> Image.Image:
    """The grid image: ``cells`` pasted where ``layout`` puts them, and every label drawn."""
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    for index, text in enumerate(layout.title_lines):
        draw.text((layout.label_left, layout.title_top + index * layout.line_height), text, fill=TEXT, font=font)
    header_bottom = layout.header_top + layout.header_height
    for column, lines in enumerate(layout.header_lines):
        # Bottom-aligned, so one-line and four-line labels all sit just above their images.
        top = header_bottom - layout.header_gap - len(lines) * layout.line_height
        for index, text in enumerate(lines):
            left = layout.column_left[column] + (layout.column_width[column] - _text_width(text, font)) // 2
            draw.text((left, top + index * layout.line_height), text, fill=TEXT, font=font)
    for row, lines in enumerate(layout.row_label_lines):
        top = layout.row_top[row] + (layout.row_height[row] - len(lines) * layout.line_height) // 2
        for index, text in enumerate(lines):
            draw.text((layout.label_left, top + index * layout.line_height), text, fill=TEXT, font=font)
    for row, images in enumerate(cells):
        for column, image in enumerate(images):
            canvas.paste(image.convert("RGB"), layout.image_origin(row, column, image.size))
    return canvas
