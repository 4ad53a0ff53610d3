"""Pure helpers for the numbers shown while training: running loss, smoothing, throughput, ETA."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class EpochWindowAverage:
    """Kohya's loss/average: the mean of the last ``window`` step losses, where the
    window is one epoch's worth of steps (a step replaces the same step of the previous
    epoch)."""

    def __init__(self, window: int) -> None:
        self._values: deque[float] = deque(maxlen=max(1, window))
        self._total = 0.0

    def add(self, value: float) -> float:
        if len(self._values) == self._values.maxlen:
            self._total -= self._values[0]
        self._values.append(value)
        self._total += value
        return self.mean

    @property
    def values(self) -> list[float]:
        """The losses in the window, oldest first (saved with the training state)."""
        return list(self._values)

    @property
    def last(self) -> float | None:
        return self._values[-1] if self._values else None

    @property
    def mean(self) -> float:
        # Re-sum now and then would guard drift; the window is small enough that float
        # error stays far below what a plot shows, but recompute exactly when cheap.
        if len(self._values) <= 4096:
            return math.fsum(self._values) / len(self._values) if self._values else math.nan
        return self._total / len(self._values)


class Throughput:
    """Steps per second over the last ``window`` steps: the time per step is the training
    step's own (data, forward, backward, optimizer), so paused time and the saving and
    sampling between steps are left out (``pause``/``resume``, ``excluded``)."""

    def __init__(self, window: int = 20, clock=time.perf_counter) -> None:  # noqa: ANN001
        self._clock = clock
        self._times: deque[float] = deque(maxlen=window + 1)
        self._paused_since: float | None = None
        self._offset = 0.0

    def mark(self) -> None:
        self._times.append(self._clock() - self._offset)

    def pause(self) -> None:
        if self._paused_since is None:
            self._paused_since = self._clock()

    def resume(self) -> None:
        if self._paused_since is not None:
            self._offset += self._clock() - self._paused_since
            self._paused_since = None

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Work between steps (saving, sampling) whose time is not a step's."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    @property
    def steps_per_second(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class PhaseTimes:
    """Time spent in each phase of a run (loading, caching, training, sampling, saving,
    paused), from the phase changes as they are seen: what the time per step leaves out is
    then shown apart from it."""

    APART = ("loading", "caching", "sampling", "saving", "paused")

    def __init__(self, clock=time.monotonic) -> None:  # noqa: ANN001
        self._clock = clock
        self._phase = ""
        self._since = 0.0
        self.seconds: dict[str, float] = {}

    def enter(self, phase: str) -> None:
        """The run is in ``phase`` from now on ("" once it has ended)."""
        now = self._clock()
        if self._phase:
            self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def outside_training(self) -> str:
        """"caching 00:04 · sampling 00:12 · paused 00:30" (phases that took time), or ""."""
        now = self._clock()
        totals = dict(self.seconds)
        if self._phase:
            totals[self._phase] = totals.get(self._phase, 0.0) + now - self._since
        return " · ".join(f"{phase} {format_duration(totals[phase])}" for phase in self.APART
                          if totals.get(phase, 0.0) >= 0.5)


def eta_seconds(steps_done: int, total_steps: int, steps_per_second: float) -> float | None:
    if steps_per_second <= 0:
        return None
    return max(0, total_steps - steps_done) / steps_per_second


def format_rate(steps_per_second: float) -> str:
    """"1.85 it/s", or "3.20 s/it" when a step takes longer than a second (as tqdm and
    sd-scripts print it), never "0.00 it/s"; "-- it/s" before there is a rate."""
    if not math.isfinite(steps_per_second) or steps_per_second <= 0:
        return "-- it/s"
    if steps_per_second < 1:
        return f"{1 / steps_per_second:.2f} s/it"
    return f"{steps_per_second:.2f} it/s"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class DebiasedEma:
    """TensorBoard's loss smoothing (weight 0 = raw, 0.99 = very smooth): an exponential moving
    average divided by the share of weight its zero start leaves out, so the first points are
    not pulled towards 0. One value at a time, so a live curve costs O(1) a point; the one
    implementation the app's plots and ``smooth`` share."""

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self._last = 0.0
        self._debias = 0.0

    def add(self, value: float) -> float:
        """The smoothed value of the curve up to and including ``value``."""
        weight = self.weight
        self._last = self._last * weight + (1 - weight) * value
        self._debias = self._debias * weight + (1 - weight)
        return self._last / self._debias if self._debias else value


def smooth(values: Iterable[float], weight: float) -> list[float]:
    """A whole curve smoothed as ``DebiasedEma`` does it, value by value."""
    ema = DebiasedEma(weight)
    return [ema.add(float(value)) for value in values]
