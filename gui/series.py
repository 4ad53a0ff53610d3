"""Plot data without Qt: growable x/y arrays, an incremental smoothed series and a redraw
throttle. Kept free of Qt so the arithmetic that keeps a 100k-step run smooth is unit-tested
on its own."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from core.training.metrics import DebiasedEma


class SeriesBuffer:
    """x/y values in preallocated float64 arrays that double when full, so an append is
    amortised O(1) and a redraw hands pyqtgraph slices without copying."""

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(1, int(capacity))
        self._initial = capacity
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return len(self._x)

    def append(self, x: float, y: float) -> None:
        if self._size == len(self._x):
            self._grow(self._size + 1)
        self._x[self._size] = x
        self._y[self._size] = y
        self._size += 1

    def extend(self, xs: np.ndarray | list[float], ys: np.ndarray | list[float]) -> None:
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"x and y differ in length ({len(xs)} and {len(ys)})")
        end = self._size + len(xs)
        if end > len(self._x):
            self._grow(end)
        self._x[self._size:end] = xs
        self._y[self._size:end] = ys
        self._size = end

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """The filled part (views: valid until the next append, never to be written to)."""
        return self._x[:self._size], self._y[:self._size]

    def last(self) -> tuple[float, float] | None:
        if not self._size:
            return None
        return float(self._x[self._size - 1]), float(self._y[self._size - 1])

    def clear(self) -> None:
        # Fresh arrays: a plot may still show slices of the old ones until its next redraw.
        self._x = np.empty(self._initial, dtype=np.float64)
        self._y = np.empty(self._initial, dtype=np.float64)
        self._size = 0

    def replace_y(self, ys: np.ndarray) -> None:
        """Overwrite every filled y (a smoothed series recomputed with a new weight)."""
        if len(ys) != self._size:
            raise ValueError(f"expected {self._size} values, got {len(ys)}")
        # A fresh array, not an in-place write: pyqtgraph may still hold the old slice.
        fresh = np.empty(len(self._y), dtype=np.float64)
        fresh[:self._size] = ys
        self._y = fresh

    def _grow(self, needed: int) -> None:
        capacity = len(self._x)
        while capacity < needed:
            capacity *= 2
        for name in ("_x", "_y"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=np.float64)
            new[:self._size] = old[:self._size]
            setattr(self, name, new)


class SmoothedSeries:
    """A raw series and its TensorBoard-smoothed twin (core's ``DebiasedEma``), appended together."""

    def __init__(self, weight: float = 0.9, capacity: int = 1024) -> None:
        self.raw = SeriesBuffer(capacity)
        self.smoothed = SeriesBuffer(capacity)
        self._ema = DebiasedEma(weight)

    @property
    def weight(self) -> float:
        return self._ema.weight

    def append(self, x: float, y: float) -> None:
        self.raw.append(x, y)
        self.smoothed.append(x, self._ema.add(y))

    def set_weight(self, weight: float) -> None:
        """Recompute the whole smoothed curve once; later points continue incrementally."""
        if weight == self._ema.weight:
            return
        ema = DebiasedEma(weight)
        _, ys = self.raw.view()
        if len(ys):
            self.smoothed.replace_y(np.fromiter((ema.add(y) for y in ys.tolist()), np.float64, len(ys)))
        self._ema = ema

    def clear(self) -> None:
        self.raw.clear()
        self.smoothed.clear()
        self._ema = DebiasedEma(self._ema.weight)

    def __len__(self) -> int:
        return len(self.raw)


class Throttle:
    """Decides when a redraw is due: only after new data, at most once per ``interval``
    seconds, and less often when redraws themselves get slow (a redraw may use at most
    ``budget`` of the time), so a huge curve never starves the event loop."""

    def __init__(self, interval: float = 0.1, *, budget: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = interval
        self.interval = interval
        self.budget = budget
        self._clock = clock
        self._dirty = False
        self._last: float | None = None

    def mark(self) -> None:
        """New data arrived."""
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def due(self) -> bool:
        """True (and the data counts as drawn) when a redraw should happen now."""
        if not self._dirty:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        self._dirty = False
        return True

    def took(self, seconds: float) -> None:
        """How long the last redraw took; stretches the interval when redraws are heavy."""
        self.interval = max(self.min_interval, seconds / self.budget)

    def reset(self) -> None:
        self._dirty = False
        self._last = None
        self.interval = self.min_interval
