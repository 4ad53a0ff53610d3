#!/usr/bin/env python3
"""Benchmark: the memory an idle app keeps after a training run (issue 18 item 4).

    nice -n 10 .venv/bin/python benchmarks/bench_memory_release.py               # full-size SD 1.5
    .venv/bin/python benchmarks/bench_memory_release.py --release collect         # as before the release
    .venv/bin/python benchmarks/bench_memory_release.py --model builtin:demo-model   # the tiny demo model

It builds full-size SD 1.5 with random weights from the shipped configs (resources/sd15) as
a diffusers folder, fp16 safetensors, in a temporary folder (nothing is downloaded). Then a
fresh Python process, with QT_QPA_PLATFORM=offscreen, does what the app does around a run:

1. makes the app (gui.app.make_app, the app's main-window module imported) -> RSS "fresh";
2. imports what the first run imports (torch, diffusers, transformers, peft, the engine)
   -> RSS "libraries loaded": what no release can give back, since Python keeps modules;
3. trains 2 steps through the GUI's worker (gui.worker.TrainingWorker, in its QThread) on the
   demo dataset at 256 px, batch 1, latent cache in memory, no samples, and waits for its
   ``finished`` signal -> RSS "after run 1" (the worker has released the run's memory);
4. trains a second, identical run -> its reported peak RSS (summary.json) and RSS "after run 2".

``--release`` picks what the worker does when a run ends: ``full`` (the app as shipped:
gui.worker.release_run_memory: collect, empty CUDA's cache, malloc_trim), ``collect`` (a
garbage collection only, what the worker did before the release existed), ``none`` (nothing
at all; the app's garbage collector timer still runs). It prints the figures in MB and the
idle figures' excess over "libraries loaded".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
RELEASES = ("full", "collect", "none")
RUN_TIMEOUT_S = 3600.0


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


# What a run imports. Python keeps modules once imported, so no release can give their memory back.
RUN_LIBRARIES = ("torch", "accelerate", "peft", "diffusers.models", "transformers.models.clip",
                 "core.models.loaders", "core.training.engine", "core.training.setup", "core.training.step")


def load_run_libraries() -> None:
    import importlib

    import diffusers
    import transformers

    for name in RUN_LIBRARIES:
        importlib.import_module(name)
    # Both load their classes lazily, on first attribute access.
    for attribute in ("UNet2DConditionModel", "AutoencoderKL", "DDPMScheduler"):
        getattr(diffusers, attribute)
    for attribute in ("CLIPTextModel", "CLIPTokenizer"):
        getattr(transformers, attribute)


def build_full_sd15(folder: Path) -> Path:
    """Full-size SD 1.5 (random weights, fp16 safetensors), with gpu_check's builder."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module.build_random_sd15(folder, torch.device("cpu"))


def run_config(model: str, out: Path, name: str, resolution: int, steps: int) -> object:
    """The demo project's settings, with this model, 256 px, batch 1, ``steps`` steps, nothing
    sampled or saved along the way."""
    from core.config.presets import find_preset, load_preset
    from core.config.schema import Duration

    config = load_preset(find_preset("demo")).config
    config.model.base_model = model
    config.dataset.resolution = (resolution, resolution)
    config.dataset.min_bucket_reso = min(config.dataset.min_bucket_reso, resolution)
    config.training.batch_size = 1
    config.training.duration, config.training.max_train_steps = Duration.STEPS, steps
    config.schedule.warmup_steps = 0
    config.sampling.every_n_epochs = config.sampling.every_n_steps = 0
    config.sampling.at_step_0 = False
    config.output.save_every_n_epochs = config.output.save_every_n_steps = 0
    config.output.save_state = False
    config.output.output_dir = str(out)
    config.output.output_name = name
    return config


def _train_in_worker(worker: object, config: object) -> tuple[object, float | None]:
    """One run through the worker, as the Training tab starts it; returns (result, the last
    step's reported run peak)."""
    from PySide6.QtCore import QEventLoop, QTimer

    from core.training.events import StepMetrics

    results: list[object] = []
    peaks: list[float] = []
    loop = QEventLoop()

    def on_event(event: object) -> None:
        if isinstance(event, StepMetrics):
            peaks.append(event.memory_run_peak_mb)

    def on_finished(result: object) -> None:
        results.append(result)
        loop.quit()

    worker.event.connect(on_event)
    worker.finished.connect(on_finished)
    QTimer.singleShot(int(RUN_TIMEOUT_S * 1000), loop.quit)
    worker.start(config, description="bench_memory_release")
    loop.exec()
    worker.event.disconnect(on_event)
    worker.finished.disconnect(on_finished)
    if not results:
        raise RuntimeError(f"the run did not end within {RUN_TIMEOUT_S:.0f} s")
    return results[0], (peaks[-1] if peaks else None)


def _summary_peak(result: object) -> float | None:
    run_dir = getattr(result, "run_dir", None)
    if not run_dir:
        return None
    summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    return summary.get("peak_vram_mb")  # on a CPU run: the run's peak RSS


def measure(model: str, work: Path, release: str = "full", resolution: int = 256, steps: int = 2) -> dict:
    """In this process (a fresh one: see ``measure_in_subprocess``): the figures above, in MB."""
    import importlib

    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, not {release!r}")
    from gui.app import make_app

    app = make_app()
    importlib.import_module("gui.main_window")  # the app as started: its modules loaded, torch not
    import gui.worker as worker_module
    from gui.gc_guard import gui_collector

    if release == "collect":
        worker_module.release_run_memory = lambda: gui_collector().release()
    elif release == "none":
        # The worker's hold on collection is left as it is: the app holds it for its life anyway.
        worker_module.release_run_memory = lambda: None
    app.processEvents()
    figures: dict = {"release": release, "model": model, "torch_at_start": "torch" in sys.modules,
                     "fresh_mb": rss_mb()}
    load_run_libraries()
    figures["libraries_mb"] = rss_mb()
    worker = worker_module.TrainingWorker()
    for run in (1, 2):
        started = time.perf_counter()
        result, step_peak = _train_in_worker(worker, run_config(model, work / "runs", f"run{run}", resolution, steps))
        app.processEvents()
        figures[f"run{run}_result"] = f"{type(result).__name__}:{getattr(result, 'reason', getattr(result, 'kind', ''))}"
        figures[f"run{run}_seconds"] = time.perf_counter() - started
        figures[f"run{run}_peak_mb"] = _summary_peak(result)
        figures[f"run{run}_step_peak_mb"] = step_peak
        figures[f"after_run{run}_mb"] = rss_mb()
    return figures


def measure_in_subprocess(model: str, work: Path, release: str = "full", resolution: int = 256,
                          steps: int = 2, timeout_s: float = RUN_TIMEOUT_S) -> dict:
    """``measure`` in a fresh Python process with an offscreen Qt; its figures."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model, "--work", str(work),
               "--release", release, "--resolution", str(resolution), "--steps", str(steps)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("FIGURES ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the measuring process failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("FIGURES "):])


def report(figures: dict) -> str:
    base = figures["libraries_mb"]

    def mb(value: float | None) -> str:
        return "–" if value is None else f"{value:8.0f}"

    lines = [f"model {figures['model']}, release '{figures['release']}'; "
             f"runs: {figures['run1_result']} in {figures['run1_seconds']:.0f} s, "
             f"{figures['run2_result']} in {figures['run2_seconds']:.0f} s",
             f"  fresh app               {mb(figures['fresh_mb'])} MB   (torch loaded: {figures['torch_at_start']})",
             f"  libraries loaded        {mb(base)} MB"]
    for run in (1, 2):
        idle = figures[f"after_run{run}_mb"]
        lines.append(f"  idle after run {run}        {mb(idle)} MB   "
                     f"{idle - base:+.0f} MB over libraries loaded, x{idle / figures['fresh_mb']:.1f} fresh")
    for run in (1, 2):
        peak = figures[f"run{run}_peak_mb"]
        lines.append(f"  run {run} reported peak     {mb(peak)} MB   "
                     f"(last step's run peak {mb(figures[f'run{run}_step_peak_mb']).strip()} MB)")
    if figures["run1_peak_mb"] and figures["run2_peak_mb"]:
        lines.append(f"  run 2 peak / run 1 peak  {figures['run2_peak_mb'] / figures['run1_peak_mb']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="a model to train (default: full-size SD 1.5 built here)")
    parser.add_argument("--release", choices=RELEASES, nargs="+", default=["full"],
                        help="what the worker does when a run ends; several: one process each")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        figures = measure(args.model, Path(args.work), args.release[0], args.resolution, args.steps)
        print("FIGURES " + json.dumps(figures), flush=True)
        os._exit(0)  # the figures are out; skip tearing the app down
    with tempfile.TemporaryDirectory(prefix="lorakiln-bench-memory-") as temp:
        work = Path(temp)
        model = args.model
        if not model:
            started = time.perf_counter()
            print("building full-size SD 1.5 with random weights…", flush=True)
            model = str(build_full_sd15(work / "sd15"))
            print(f"built and written in {time.perf_counter() - started:.0f} s", flush=True)
        for release in args.release:
            figures = measure_in_subprocess(model, work / release, release, args.resolution, args.steps)
            print(report(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
