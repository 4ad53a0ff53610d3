"""Plot data for live training curves: growable arrays, incremental smoothing, a redraw throttle."""

import numpy as np
import pytest

from core.training.metrics import smooth
from gui.series import SeriesBuffer, SmoothedSeries, Throttle


def test_a_buffer_grows_by_doubling_and_keeps_every_point():
    buffer = SeriesBuffer(capacity=4)
    capacities = set()
    for i in range(1000):
        buffer.append(i, i * 0.5)
        capacities.add(buffer.capacity)
    x, y = buffer.view()
    assert len(buffer) == 1000 and np.array_equal(x, np.arange(1000)) and np.array_equal(y, np.arange(1000) * 0.5)
    assert capacities == {4 * 2**k for k in range(9)}  # 4 .. 1024: doubled, never grown by one


def test_the_view_is_the_filled_part_only_and_extend_matches_append():
    one, many = SeriesBuffer(2), SeriesBuffer(2)
    for i in range(5):
        one.append(i, -i)
    many.extend([0, 1, 2], [0, -1, -2])
    many.extend(np.array([3, 4]), np.array([-3, -4]))
    assert all(np.array_equal(a, b) for a, b in zip(one.view(), many.view()))
    assert len(one.view()[0]) == 5 and one.last() == (4.0, -4.0)
    with pytest.raises(ValueError):
        many.extend([1, 2], [1])


def test_appending_does_not_change_a_view_already_handed_out():
    buffer = SeriesBuffer(2)
    buffer.extend([1, 2], [10, 20])
    x, y = buffer.view()
    buffer.extend(range(3, 100), range(30, 1000, 10))
    assert x.tolist() == [1, 2] and y.tolist() == [10, 20]


def test_clear_empties_the_buffer():
    buffer = SeriesBuffer(2)
    buffer.extend(range(10), range(10))
    buffer.clear()
    assert len(buffer) == 0 and buffer.last() is None and len(buffer.view()[0]) == 0


def test_a_smoothed_series_recomputes_once_when_the_weight_changes_then_continues():
    values = np.random.default_rng(1).normal(0.5, 0.1, 200)
    series = SmoothedSeries(weight=0.9)
    for step, value in enumerate(values[:120], 1):
        series.append(step, value)
    series.set_weight(0.5)
    for step, value in enumerate(values[120:], 121):
        series.append(step, value)
    x, y = series.smoothed.view()
    assert x.tolist() == list(range(1, 201))
    assert np.allclose(y, smooth(values.tolist(), 0.5))
    assert np.array_equal(series.raw.view()[1], values)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_redraws_only_after_new_data():
    clock = FakeClock()
    throttle = Throttle(0.1, clock=clock)
    assert not throttle.due()
    throttle.mark()
    assert throttle.due()
    clock.now += 1
    assert not throttle.due()  # nothing new since


def test_the_throttle_allows_at_most_ten_redraws_a_second_however_fast_data_arrives():
    clock = FakeClock()
    throttle = Throttle(0.1, clock=clock)
    redraws = 0
    for _ in range(10_000):  # 10k points over 2 s, a tick every 1 ms
        throttle.mark()
        redraws += throttle.due()
        clock.now += 0.0002
    assert 19 <= redraws <= 21


def test_slow_redraws_stretch_the_interval_and_fast_ones_restore_it():
    clock = FakeClock()
    throttle = Throttle(0.1, budget=0.25, clock=clock)
    throttle.took(0.05)  # a 50 ms redraw may use a quarter of the time: one per 200 ms
    assert throttle.interval == pytest.approx(0.2)
    throttle.mark()
    assert throttle.due()
    throttle.mark()
    clock.now += 0.15
    assert not throttle.due()
    clock.now += 0.06
    assert throttle.due()
    throttle.took(0.001)
    assert throttle.interval == 0.1
