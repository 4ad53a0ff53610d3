"""A small line-chart renderer on Pillow, for the plots `lorakiln compare` exports.

Plots must be writable headless, from the CLI and from a frozen build, without
matplotlib: this draws axes with 1-2-5 ticks (or decades on a log axis), a grid, a title,
axis labels, a legend and any number of series, leaving gaps where a value is NaN.
Series with more points than the plot has pixels are reduced to each pixel column's
minimum and maximum, so a 100k-step curve draws quickly and keeps its spikes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour per run, in run order; the GUI's Runs tab uses the same cycle so a run has the
# same colour in the app and in exported plots. Okabe & Ito's colour-blind-safe palette
# (yellow left out: unreadable on white), then four more distinct hues.
RUN_COLOURS: tuple[str, ...] = (
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
    "#332288", "#882255", "#117733", "#999933",
)
BACKGROUND = "#FFFFFF"
AXIS_COLOUR = "#404040"
GRID_COLOUR = "#E4E4E4"
TEXT_COLOUR = "#202020"
LINE_WIDTH = 2
MARKERS_UP_TO = 60  # series with at most this many points also get a dot per point


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


@dataclass
class ChartSeries:
    label: str
    x: Sequence[float] | np.ndarray
    y: Sequence[float] | np.ndarray
    colour: str | None = None  # None: the next colour of RUN_COLOURS
    dashed: bool = False


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow built without FreeType
        return ImageFont.load_default()


def nice_ticks(low: float, high: float, target: int = 6, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high];
    ``integer`` keeps them whole numbers (steps, epochs)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1.0) if integer else step
    first = math.ceil(low / step - 1e-9)
    ticks = []
    k = first
    while k * step <= high + step * 1e-9:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    """Decades inside [low, high]; 2 and 5 times them too when the range spans few decades."""
    if low <= 0 or high <= low:
        return [low] if low > 0 else []
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    multiples = (1,) if last - first > 2 else (1, 2, 5)
    ticks = [float(f"{m}e{e}") for e in range(first, last + 1) for m in multiples]
    return [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]


def format_tick(value: float, ticks: Sequence[float]) -> str:
    span = max((abs(t) for t in ticks), default=abs(value))
    if value == 0:
        return "0"
    if span >= 1e6 or span < 1e-3:
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    step = min((b - a for a, b in zip(ticks, ticks[1:]) if b > a), default=abs(value))
    decimals = 0
    while decimals < 8 and abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:  # noqa: ANN001
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _elide(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:  # noqa: ANN001
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def _segments(x: np.ndarray, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Runs of consecutive finite points; a NaN breaks the line."""
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate(([0], finite.astype(np.int8), [0]))))
    return [(x[a:b], y[a:b]) for a, b in zip(edges[::2], edges[1::2])]


def _decimate(px: np.ndarray, py: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel column's lowest and highest point, for series far denser than the plot."""
    if px.size <= 4 * width or np.any(np.diff(px) < 0):
        return px, py
    columns = np.floor(px).astype(np.int64)
    starts = np.flatnonzero(np.concatenate(([True], columns[1:] != columns[:-1])))
    lows, highs = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
    xs = columns[starts].astype(np.float64)
    return np.repeat(xs, 2), np.column_stack((lows, highs)).ravel()


def _range(values: list[np.ndarray], log: bool) -> tuple[float, float] | None:
    finite = [v[np.isfinite(v) & ((v > 0) if log else True)] for v in values]
    finite = [v for v in finite if v.size]
    if not finite:
        return None
    low, high = min(float(v.min()) for v in finite), max(float(v.max()) for v in finite)
    if log:
        low, high = math.log10(low), math.log10(high)
    if high == low:
        pad = 0.5 if log else (abs(low) * 0.1 or 1.0)
        return low - pad, high + pad
    pad = (high - low) * 0.05
    return low - pad, high + pad


def line_chart(series: Sequence[ChartSeries], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (900, 540), log_y: bool = False, integer_x: bool = True) -> Image.Image:
    """Render ``series`` as a line chart; a log y axis leaves out values that are not positive.
    ``integer_x`` (the default: steps and epochs) puts x ticks on whole numbers only."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    scale = max(0.6, min(width / 900, height / 540))
    font, title_font = _font(round(13 * scale)), _font(round(17 * scale))
    prepared = []
    for index, item in enumerate(series):
        x, y = np.asarray(item.x, dtype=np.float64), np.asarray(item.y, dtype=np.float64)
        count = min(x.size, y.size)
        x, y = x[:count], y[:count]
        if log_y:
            y = np.where(y > 0, y, np.nan)
        prepared.append((item, x, y, item.colour or run_colour(index)))

    pad = round(12 * scale)
    title_h = _text_size(draw, title, title_font)[1] if title else 0
    draw.text((width // 2, pad), title, fill=TEXT_COLOUR, font=title_font, anchor="mt")
    x_range = _range([p[1] for p in prepared if p[2].size], log=False)
    y_range = _range([p[2] for p in prepared], log=log_y)
    if log_y and y_range:
        y_ticks = [math.log10(t) for t in log_ticks(10 ** y_range[0], 10 ** y_range[1])]
        y_labels = [format_tick(10 ** t, [10 ** t for t in y_ticks]) for t in y_ticks]
    else:
        y_ticks = nice_ticks(*y_range) if y_range else []
        y_labels = [format_tick(t, y_ticks) for t in y_ticks]
    x_ticks = nice_ticks(*x_range, integer=integer_x) if x_range else []
    x_labels = [format_tick(t, x_ticks) for t in x_ticks]

    text_h = _text_size(draw, "0Ag", font)[1]
    tick_w = max((_text_size(draw, s, font)[0] for s in y_labels), default=0)
    legend_w = 0
    if prepared:
        legend_w = min(width // 3, max(_text_size(draw, p[0].label, font)[0] for p in prepared) + 4 * pad)
    left = pad + text_h + pad + tick_w + pad // 2
    top = pad + title_h + pad
    right = width - pad - legend_w
    bottom = height - pad - text_h - pad - text_h - pad // 2
    if right - left < 40 or bottom - top < 40:
        return image  # too small to draw anything legible

    draw.rectangle([left, top, right, bottom], outline=AXIS_COLOUR)
    draw.text(((left + right) // 2, height - pad), x_label, fill=TEXT_COLOUR, font=font, anchor="md")
    if y_label:
        label_w, label_h = _text_size(draw, y_label, font)
        label = Image.new("RGBA", (label_w + 4, label_h + 8), (0, 0, 0, 0))
        ImageDraw.Draw(label).text((2, 0), y_label, fill=TEXT_COLOUR, font=font)
        label = label.rotate(90, expand=True)
        image.paste(label, (pad, max(top, (top + bottom - label.height) // 2)), label)
    if x_range is None or y_range is None:
        draw.text(((left + right) // 2, (top + bottom) // 2), "no data", fill=AXIS_COLOUR, font=font, anchor="mm")
        return image

    def to_px(values: np.ndarray) -> np.ndarray:
        return left + (values - x_range[0]) / (x_range[1] - x_range[0]) * (right - left)

    def to_py(values: np.ndarray) -> np.ndarray:
        values = np.log10(values) if log_y else values
        return bottom - (values - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top)

    for tick, text in zip(y_ticks, y_labels):
        py = bottom - (tick - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top)
        draw.line([(left + 1, py), (right - 1, py)], fill=GRID_COLOUR)
        draw.line([(left - 4, py), (left, py)], fill=AXIS_COLOUR)
        draw.text((left - 6, py), text, fill=TEXT_COLOUR, font=font, anchor="rm")
    for tick, text in zip(x_ticks, x_labels):
        px = float(to_px(np.float64(tick)))
        draw.line([(px, top + 1), (px, bottom - 1)], fill=GRID_COLOUR)
        draw.line([(px, bottom), (px, bottom + 4)], fill=AXIS_COLOUR)
        draw.text((px, bottom + 6), text, fill=TEXT_COLOUR, font=font, anchor="mt")

    line_w = max(1, round(LINE_WIDTH * scale))
    for item, x, y, colour in prepared:
        for sx, sy in _segments(x, y):
            px, py = _decimate(to_px(sx), to_py(sy), right - left)
            points = list(zip(px.tolist(), py.tolist()))
            if len(points) > 1:
                if item.dashed:
                    _dashed_line(draw, points, colour, line_w, round(8 * scale))
                else:
                    draw.line(points, fill=colour, width=line_w, joint="curve")
            if len(points) == 1 or sx.size <= MARKERS_UP_TO:
                r = line_w + 1
                for cx, cy in points:
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)

    legend_x, legend_y = right + pad, top
    swatch = round(18 * scale)
    for item, _, _, colour in prepared:
        if legend_y + text_h > bottom:
            break
        mid = legend_y + text_h // 2 + 1
        if item.dashed:
            _dashed_line(draw, [(legend_x, mid), (legend_x + swatch, mid)], colour, line_w + 1, 5)
        else:
            draw.line([(legend_x, mid), (legend_x + swatch, mid)], fill=colour, width=line_w + 2)
        text = _elide(draw, item.label, font, width - legend_x - swatch - 2 * pad)
        draw.text((legend_x + swatch + pad // 2, mid), text, fill=TEXT_COLOUR, font=font, anchor="lm")
        legend_y += text_h + pad
    return image


def _dashed_line(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour: str,
                 width: int, dash: int) -> None:
    """A polyline drawn as dashes of ``dash`` pixels with equal gaps, continuing across vertices."""
    drawing, left_in_dash = True, float(dash)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        done = 0.0
        while done < length:
            part = min(left_in_dash, length - done)
            if drawing:
                a, b = done / length, (done + part) / length
                draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                          fill=colour, width=width)
            done += part
            left_in_dash -= part
            if left_in_dash <= 0:
                drawing, left_in_dash = not drawing, float(dash)
