#!/usr/bin/env python3
"""Benchmark: does a 100k-step run keep the app's memory bounded?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_long_run.py [--steps 100000]

(a) Plots: 100k simulated StepMetrics (two learning-rate groups, memory, an epoch every
    1,000 steps) fed into the Training tab's TrainingPlots, offscreen, redrawn every 500
    steps as the throttle would during a real run. Memory (process RSS and Python's traced
    heap, numpy arrays included) is taken after 10k and after 100k steps, against the
    memory before the first step. Stored data grows with the steps by design (every point
    stays inspectable); the question is how many bytes a step costs and that nothing
    else (events, Python objects per step, pyqtgraph caches) piles up.
(b) Metrics file: the same records appended through MetricsWriter and read back with
    read_metrics; the writer and the reader must stay flat however long the file gets.
Prints the figures at 10k and 100k and the ratio of the growth (10.0 = strictly linear).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from core.training.run_folder import MetricsWriter, read_metrics  # noqa: E402
from core.training.events import EpochMetrics, StepMetrics  # noqa: E402

MB = 1024 * 1024
CHECKPOINTS = (10_000, 100_000)


def metrics(step: int, total: int) -> StepMetrics:
    loss = 0.1 + 0.05 * math.sin(step / 37) + 0.02 * ((step * 7919) % 101) / 101
    lr = 1e-4 * (0.5 + 0.5 * math.cos(math.pi * step / total))
    return StepMetrics(step=step, epoch=1 + step // 1000, total_steps=total, loss=loss, avg_loss=loss,
                       lr={"unet": lr, "text_encoder": lr / 2}, memory_allocated_mb=5000 + step % 50,
                       memory_reserved_mb=6000, memory_peak_mb=5100, memory_kind="cuda", it_per_s=2.0,
                       images_per_s=4.0, eta_s=(total - step) / 2, elapsed_s=step / 2)


class Meter:
    def __init__(self) -> None:
        self.process = psutil.Process()
        gc.collect()
        self.rss0 = self.process.memory_info().rss
        self.heap0 = tracemalloc.get_traced_memory()[0]
        self.objects0 = len(gc.get_objects())

    def take(self) -> tuple[float, float, int]:
        """(RSS growth MB, traced heap growth MB, object growth) since the meter was made."""
        gc.collect()
        return ((self.process.memory_info().rss - self.rss0) / MB,
                (tracemalloc.get_traced_memory()[0] - self.heap0) / MB,
                len(gc.get_objects()) - self.objects0)


def report(name: str, figures: dict[int, tuple[float, float, int]]) -> None:
    small, large = (figures[n] for n in CHECKPOINTS)
    for steps, (rss, heap, objects) in figures.items():
        print(f"{name}: after {steps:>7,} steps: RSS +{rss:7.1f} MB, traced heap +{heap:7.2f} MB "
              f"({heap * MB / steps:6.0f} bytes/step), objects {objects:+,}")
    if max(small[1], large[1]) < 0.01:
        print(f"{name}: flat (under 10 KB of heap growth at any point)")
        return
    ratio = large[1] / small[1]
    print(f"{name}: heap growth {CHECKPOINTS[1]:,} / {CHECKPOINTS[0]:,} steps = {ratio:.2f} "
          f"(1.0 = flat, {CHECKPOINTS[1] / CHECKPOINTS[0]:.1f} = proportional to the steps)")


def bench_plots(total: int) -> dict[int, tuple[float, float, int]]:
    from gui.app import make_app
    from gui.training_plots import TrainingPlots

    app = make_app()
    plots = TrainingPlots()
    widgets = []
    for plot in plots.all:  # shown, so redraws paint as in the app
        plot.resize(420, 260)
        plot.show()
        widgets.append(plot)
    app.processEvents()
    meter = Meter()
    figures = {}
    started = time.perf_counter()
    for step in range(1, total + 1):
        plots.add_step(metrics(step, total))
        if step % 1000 == 0:
            plots.add_epoch(EpochMetrics(step // 1000, step, 0.1))
        if step % 500 == 0:
            plots.redraw_now()
            app.processEvents()
        if step in CHECKPOINTS:
            figures[step] = meter.take()
    print(f"plots: {total:,} steps fed and redrawn in {time.perf_counter() - started:.1f} s; "
          f"loss buffer capacity {plots.loss.loss.raw.capacity:,} points")
    return figures


def bench_metrics_file(total: int) -> dict[int, tuple[float, float, int]]:
    with tempfile.TemporaryDirectory(prefix="lorakiln-bench-") as folder:
        path = Path(folder) / "metrics.jsonl"
        writer = MetricsWriter(path)
        meter = Meter()
        figures = {}
        for step in range(1, total + 1):
            record = metrics(step, total).__dict__
            writer.write({"type": "step", **{k: v for k, v in record.items() if k != "total_steps"}})
            if step in CHECKPOINTS:
                figures[step] = meter.take()
        writer.close()
        size = path.stat().st_size / MB
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        count = sum(1 for record in read_metrics(path) if record["type"] == "step")
        peak = (tracemalloc.get_traced_memory()[1] - before) / 1024
        print(f"metrics file: {count:,} records, {size:.1f} MB on disk; reading them all peaks at "
              f"+{peak:.0f} KB of Python heap")
    return figures


def main() -> int:
    global CHECKPOINTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=CHECKPOINTS[-1])
    args = parser.parse_args()
    CHECKPOINTS = (args.steps // 10, args.steps)
    tracemalloc.start()
    report("plots", bench_plots(args.steps))
    report("metrics writer", bench_metrics_file(args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
