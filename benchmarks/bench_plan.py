#!/usr/bin/env python3
"""Benchmark: planning a 10,000-image dataset from file headers vs decoding every image.

    .venv/bin/python benchmarks/bench_plan.py [--images 10000] [--folder DIR]

Generates (once, then reuses) a Kohya-layout dataset of mixed formats and sizes, then
times in the same run: (a) the full plan (scan headers + captions + buckets + steps),
cold once and warm three times, and (b) the reference: opening and fully decoding every
image, which is what a planner that reads pixels would pay. Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from core.config.schema import DatasetParams, Duration, SubsetParams, TrainingParams  # noqa: E402
from core.data.imageinfo import is_image_file  # noqa: E402
from core.data.plan import plan_dataset  # noqa: E402

FORMATS = [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP")]


def make_dataset(root: Path, count: int) -> None:
    marker = root / f".complete-{count}"
    if marker.exists():
        return
    rng = random.Random(1)
    for i in range(count):
        folder = root / f"{1 + i % 4}_concept{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = rng.randint(128, 768), rng.randint(128, 768)
        suffix, fmt = FORMATS[i % len(FORMATS)]
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (w, h), colour)
        image.paste((255 - colour[0], 80, 40), (w // 4, h // 4, w // 2, h // 2))
        path = folder / f"img_{i:05d}{suffix}"
        image.save(path, fmt, **({"quality": 85} if fmt in ("JPEG", "WEBP") else {}))
        if i % 3:
            path.with_suffix(".txt").write_text(f"tag{i % 17}, tag{i % 5}, concept{i % 4}\n")
    marker.write_text("ok")


def time_plan(root: Path) -> float:
    data = DatasetParams(subsets=[SubsetParams(image_dir=str(root), kohya_layout=True)],
                         resolution=(1024, 1024), max_bucket_reso=2048)
    training = TrainingParams(batch_size=4, duration=Duration.EPOCHS, max_train_epochs=10)
    start = time.perf_counter()
    plan = plan_dataset(data, training)
    elapsed = time.perf_counter() - start
    assert len(plan.images) + len(plan.skipped) > 0
    return elapsed


def time_decode(root: Path) -> float:
    paths = sorted(p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if is_image_file(p.name))
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "lorakiln-bench-plan")
    args = parser.parse_args()
    root = args.folder
    t0 = time.perf_counter()
    make_dataset(root, args.images)
    print(f"dataset: {args.images} images in {root} (ready in {time.perf_counter() - t0:.1f} s)")
    cold = time_plan(root)  # first pass after generation: the page cache is already warm on Linux
    warm = [time_plan(root) for _ in range(3)]
    decode = time_decode(root)
    n = args.images
    best = min(warm)
    print(f"plan, first run:        {cold:7.3f} s  {n / cold:9.0f} images/s")
    print(f"plan, warm (best of 3): {best:7.3f} s  {n / best:9.0f} images/s  (median {statistics.median(warm):.3f} s)")
    print(f"reference, full decode: {decode:7.3f} s  {n / decode:9.0f} images/s")
    print(f"ratio: planning is {decode / best:.1f}x faster than decoding each image")
    print(f"cpu count {os.cpu_count()}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
