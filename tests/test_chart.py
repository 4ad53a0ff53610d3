"""The Pillow line chart: ticks, colours, gaps, log axes and dense series."""

import time

import numpy as np
import pytest
from PIL import ImageColor

from core.studies.chart import (RUN_COLOURS, ChartSeries, _decimate, format_tick, line_chart, log_ticks, nice_ticks,
                        run_colour)


def _mask(image, colour: str) -> np.ndarray:
    """Where the image has exactly this colour (rows, columns)."""
    pixels = np.asarray(image.convert("RGB"))
    return np.all(pixels == np.array(ImageColor.getrgb(colour)), axis=-1)


def test_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.05, 1.1) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 100_000) == [0, 20_000, 40_000, 60_000, 80_000, 100_000]
    assert nice_ticks(0.9, 3.1, integer=True) == [1, 2, 3]  # no epoch 1.5


def test_log_ticks_are_decades_or_1_2_5_on_a_short_range():
    assert log_ticks(1e-7, 1e-4) == [1e-7, 1e-6, 1e-5, 1e-4]
    assert log_ticks(3e-5, 3e-4) == [5e-5, 1e-4, 2e-4]
    assert log_ticks(0.0, 1.0) == []  # nothing to draw on a log axis at or below zero


def test_tick_labels_show_the_digits_the_step_needs():
    assert [format_tick(t, [0, 0.25, 0.5]) for t in (0, 0.25, 0.5)] == ["0", "0.25", "0.50"]
    assert format_tick(20_000, [0, 20_000]) == "20000"
    assert format_tick(2.5e-5, [1e-5, 1e-4]) == "2.5e-5"
    assert format_tick(1e-4, [1e-7, 1e-4]) == "1e-4"


def test_the_colour_cycle_is_distinct_hex_and_repeats():
    assert len(set(RUN_COLOURS)) == len(RUN_COLOURS) >= 8
    assert all(c.startswith("#") and len(c) == 7 for c in RUN_COLOURS)
    assert run_colour(0) == RUN_COLOURS[0] and run_colour(len(RUN_COLOURS)) == RUN_COLOURS[0]


def test_each_series_is_drawn_in_its_own_colour():
    x = np.arange(1, 101)
    image = line_chart([ChartSeries("a", x, 1 / x), ChartSeries("b", x, 2 / x)], "Loss", "step", "loss",
                       size=(600, 400))
    assert image.size == (600, 400)
    for colour in RUN_COLOURS[:2]:  # default colours, in order
        assert _mask(image, colour).sum() > 150  # a curve across the plot, not just the legend
    assert not _mask(image, RUN_COLOURS[2]).any()


def test_an_explicit_colour_is_used():
    image = line_chart([ChartSeries("a", [1, 2, 3], [1, 2, 3], colour="#ff00ff")], "t", "x", "y")
    assert _mask(image, "#ff00ff").sum() > 50
    assert not _mask(image, RUN_COLOURS[0]).any()


def test_nan_leaves_a_gap_in_the_line():
    x = np.arange(100, dtype=float)
    y = np.ones(100)
    y[40:60] = np.nan
    image = line_chart([ChartSeries("gappy", x, y)], "t", "x", "y", size=(800, 400))
    mask = _mask(image, RUN_COLOURS[0])
    row = int(np.argmax(mask.sum(axis=1)))  # the line's row (the legend swatch sits elsewhere)
    columns = np.flatnonzero(mask[row])
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(runs) == 2  # left of the gap, right of it
    left_len, gap = runs[0].size, runs[1][0] - runs[0][-1]
    assert gap > 0.3 * left_len  # 20 missing steps against 40 drawn


def test_a_log_axis_leaves_out_values_at_or_below_zero():
    x = np.arange(1, 11)
    lr = np.array([0.0, 1e-6, 1e-5, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, -1.0])
    image = line_chart([ChartSeries("lr", x, lr)], "LR", "step", "lr", log_y=True)
    assert _mask(image, RUN_COLOURS[0]).sum() > 50


def test_an_empty_chart_still_draws_its_frame():
    image = line_chart([], "Nothing yet", "step", "loss", size=(400, 300))
    pixels = np.asarray(image)
    assert (pixels < 200).any()  # frame and text on the white background


def test_dashed_lines_draw_fewer_pixels_than_solid_ones():
    x = np.arange(200)  # more points than get a marker dot each
    solid = _mask(line_chart([ChartSeries("s", x, x)], "t", "x", "y"), RUN_COLOURS[0]).sum()
    dashed = _mask(line_chart([ChartSeries("s", x, x, dashed=True)], "t", "x", "y"), RUN_COLOURS[0]).sum()
    assert 0.3 * solid < dashed < 0.8 * solid


def test_dense_series_keep_each_columns_extremes():
    px = np.linspace(0, 99.99, 10_000)
    py = np.zeros(10_000)
    py[5000] = -50.0  # a single spike must survive the reduction
    xs, ys = _decimate(px, py, 100)
    assert xs.size == 200 and ys.min() == -50.0 and ys.max() == 0.0


def test_a_100k_point_series_renders_quickly():
    x = np.arange(1, 100_001)
    y = np.sin(x / 500.0)
    start = time.perf_counter()
    image = line_chart([ChartSeries("long", x, y)], "t", "step", "y")
    assert time.perf_counter() - start < 2.0  # ~0.03 s here; generous for a loaded CI box
    assert _mask(image, RUN_COLOURS[0]).sum() > 500


def test_a_long_legend_label_is_shortened_not_spilled():
    label = "resolution=768, " * 20
    image = line_chart([ChartSeries(label, [1, 2], [1, 2])], "t", "x", "y", size=(600, 300))
    assert image.size == (600, 300)


@pytest.mark.parametrize("size", [(120, 80), (1800, 1080)])
def test_small_and_large_sizes_render(size):
    image = line_chart([ChartSeries("a", [1, 2, 3], [3, 1, 2])], "t", "x", "y", size=size)
    assert image.size == size
