#!/usr/bin/env python3
"""Benchmark: does the Training tab keep the GUI responsive while it trains and plots?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gui_stall.py [--steps 200] [--points 100000]

(a) Real training: the tiny demo-model run (tests.engine_fixtures.tiny_config) in the real
    TrainingTab, offscreen, with live plots. A 5 ms QTimer records the intervals it actually
    gets; the excess over 5 ms is the event loop's stall. Run twice in one session: the first
    includes importing torch in the worker thread, the second is a warm run. Reported for
    the whole run and for its training phase alone.
(b) Synthetic load: 100k StepMetrics fed into the tab as fast as Python can, with the event
    loop turned every 1000 events as a busy signal queue would, measuring the cost of an
    event, each redraw (setData of all plots) and the paint of the plots after it, plus
    the smoothing slider's recompute over 100k points.
Prints p50/p99/max in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QTimer  # noqa: E402

from core.training.events import StepMetrics  # noqa: E402
from gui.app import make_app  # noqa: E402
from gui.project import Project  # noqa: E402
from gui.training_tab import TrainingTab  # noqa: E402

PROBE_MS = 5


class StallProbe:
    """A 5 ms timer that records how late each tick came."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self.marks: list[tuple[str, int]] = []
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setTimerType(self._timer.timerType().PreciseTimer)
        self._timer.setInterval(PROBE_MS)
        self._timer.timeout.connect(self._on_timer_timeout)

    def start(self) -> None:
        self.intervals.clear()
        self._clock.start()
        self._last = self._clock.nsecsElapsed()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def mark(self, name: str) -> None:
        self.marks.append((name, len(self.intervals)))

    def _on_timer_timeout(self) -> None:
        now = self._clock.nsecsElapsed()
        self.intervals.append((now - self._last) / 1e6)
        self._last = now


def stats(values: list[float]) -> str:
    if not values:
        return "no samples"
    array = np.asarray(values)
    return (f"p50 {np.percentile(array, 50):7.2f}  p99 {np.percentile(array, 99):7.2f}  "
            f"max {array.max():7.2f}  (n={len(array)})")


def real_training(app, tab: TrainingTab, steps: int, root: Path, label: str) -> None:  # noqa: ANN001
    from tests.engine_fixtures import tiny_config

    probe = StallProbe()
    result: list[object] = []

    def on_event(event: object) -> None:
        # Phase boundaries, in probe samples: the first and the last step. After the last
        # the worker saves the LoRA and releases the model (gc.collect, accelerate's reset).
        if isinstance(event, StepMetrics) and event.step in (1, event.total_steps):
            probe.mark(f"step {event.step}")

    tab._worker.event.connect(on_event)
    tab.run_finished.connect(result.append)
    redraws_before = tab.plots.redraws
    probe.start()
    started = time.perf_counter()
    tab.start(tiny_config(root, steps=steps))
    while not result:
        app.processEvents()
        time.sleep(0.0005)
    wall = time.perf_counter() - started
    probe.stop()
    tab._worker.event.disconnect(on_event)
    tab.run_finished.disconnect(result.append)
    outcome = result[0]
    marks = [at for _, at in probe.marks]
    probe.marks.clear()
    stall = [max(0.0, i - PROBE_MS) for i in probe.intervals]
    first, last = (marks[0], marks[-1]) if marks else (0, len(stall))
    print(f"\n(a) {label}: {getattr(outcome, 'reason', outcome)} {getattr(outcome, 'steps', '?')} steps in "
          f"{wall:.1f} s, {tab.plots.redraws - redraws_before} redraws; stall over {PROBE_MS} ms:")
    print(f"    whole run          : {stats(stall)}")
    print(f"    loading + caching  : {stats(stall[:first])}")
    print(f"    training (live)    : {stats(stall[first:last + 1])}")
    print(f"    final save, cleanup: {stats(stall[last + 1:])}")


def synthetic_load(app, tab: TrainingTab, points: int) -> None:  # noqa: ANN001
    tab.plots.clear()
    redraws: list[float] = []
    original = tab.plots.redraw_now

    def timed_redraw() -> None:
        t0 = time.perf_counter()
        original()
        redraws.append((time.perf_counter() - t0) * 1000)

    tab.plots.redraw_now = timed_redraw
    rng = np.random.default_rng(0)
    losses = (0.2 * np.exp(-np.arange(points) / points * 3) + rng.normal(0, 0.02, points)).tolist()
    events = [StepMetrics(i + 1, i // 1000 + 1, points, abs(losses[i]), 0.1, {"unet": 1e-4, "text_encoder": 5e-5},
                          {}, 2000.0 + i * 0.001, 2100.0, 2200.0, "cuda", 8.0, 16.0, (points - i) / 8.0, i / 8.0)
              for i in range(points)]
    probe = StallProbe()
    paints: list[float] = []
    handle = tab._on_worker_event
    probe.start()
    feed = 0.0
    started = time.perf_counter()
    for chunk in range(0, points, 1000):
        t0 = time.perf_counter()
        for event in events[chunk:chunk + 1000]:
            handle(event)
        feed += time.perf_counter() - t0
        count = len(redraws)
        app.processEvents()
        if len(redraws) > count:
            # What the redraw costs on screen: a synchronous repaint of every plot.
            t0 = time.perf_counter()
            for plot in tab.plots.all:
                plot.plot_widget.viewport().repaint()
            paints.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - started
    settle = time.perf_counter() + 0.15
    while time.perf_counter() < settle:  # the last points' redraw (spinning, not sleeping: the probe runs)
        app.processEvents()
    probe.stop()
    tab.plots.redraw_now = original
    print(f"\n(b) {points} synthetic StepMetrics in {total:.2f} s: {feed / points * 1e6:.1f} µs per event "
          f"(appends only), {len(redraws)} redraws")
    print(f"    redraw (setData, all plots) ms : {stats(redraws)}")
    print(f"    paint of all plots, ms         : {stats(paints)}")
    print(f"    stall probe interval ms        : {stats(probe.intervals)}")
    assert len(tab.plots.loss.series("raw")) == points
    t0 = time.perf_counter()
    tab.plots.loss.set_smoothing(0.6)
    tab.plots.redraw_now()
    print(f"    smoothing slider change over {points} points: {(time.perf_counter() - t0) * 1000:.1f} ms "
          "(once per redraw, not per slider position)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    app = make_app()
    tab = TrainingTab(Project())
    tab.resize(1400, 900)
    tab.show()
    tab.show_error = lambda failed: print(failed.summary, failed.traceback, file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        real_training(app, tab, args.steps, Path(tmp) / "cold", "cold run (imports torch in the worker)")
        real_training(app, tab, args.steps, Path(tmp) / "warm", "warm run")
    synthetic_load(app, tab, args.points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
