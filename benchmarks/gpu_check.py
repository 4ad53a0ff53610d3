#!/usr/bin/env python3
"""GPU check: the whole training path on one CUDA card in a few minutes, with true figures.

    .venv/bin/python benchmarks/gpu_check.py            # on a CUDA card: about 3-6 minutes
    .venv/bin/python benchmarks/gpu_check.py --cpu      # the same runs on the CPU at 256 px
    .venv/bin/python benchmarks/gpu_check.py --cpu --tiny   # the demo models instead (CI)

It builds full-size SD 1.5 and SDXL base from the shipped configs (resources/sd15,
resources/sdxl) with random weights, so nothing is downloaded, and writes each as a diffusers
folder (fp16 on disk, SDXL with both tokenizers) that the engine loads like any model. On a
GPU the modules are initialised there in fp32 (seconds); on the CPU SDXL is built in bf16.
Writing and loading SDXL's 3.5 B weights (7 GB) takes most of the time the SDXL run adds,
which the script prints ("built and written in N s"). Then it trains through the real engine
(core.training.engine.Trainer), on generated images, with each built-in preset's settings as
shipped (optimizer, precision, network, gradient checkpointing, caching) and only the
dataset, batch size and step count set here:

    sd15-lora-8gb (fp16, AdamW8bit) at 512, 768 and 1024 px, batch 3, 15 steps
    sd15-prodigy  (bf16, Prodigy)   at 512 px, after the 1024 run
    sdxl-lora-8gb (bf16, AdamW8bit, U-Net only, cached text and latents) at 1024 px, batch 1
    demo          (its tiny model)  at 256 px, after SDXL

For each run it prints seconds per step and images per second (median over the steps
after the first five), the peak VRAM allocated and reserved (reset before each run), the
engine's own peak figure, and the model FLOP utilisation against the card's dense bf16
peak (U-Net FLOPs per image from torch's FlopCounterMode: SD 1.5 0.80 TFLOP at 512, SDXL
6.76 at 1024). A second table puts the VRAM forecast (core.training.vram_forecast, made
before the run for its bucket and batch) beside the measurement: the forecast's tensors
against the run's own peak allocated (less what earlier runs left allocated when it began),
its driver figure less the CUDA context against the run's own peak reserved, the error of
each in %, the allocated error as a ratio to issue 16's aim of 10%, and the device's used
memory (torch.cuda.mem_get_info, largest at a step's end: context + reserved, to calibrate
the forecast's allowance). It checks that every run completed with finite losses, that the
LoRA weights moved, that the run after the largest one reports its own, smaller peak,
that fp16 and bf16 both ran, and that every forecast is within 10% of the peak allocated.
It prints both tables and exits 1 if any check failed.

On a machine without CUDA (or with --cpu) it runs the same list at 256 px for 2 steps:
proof that the script works, not a measurement; the forecasts are printed for a CUDA card
and their check is informational.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config.schema import DEMO_MODEL, Duration, SubsetParams, TrainConfig  # noqa: E402
from core.config.presets import find_preset, load_preset  # noqa: E402
from core.models.sd15_files import sd15_config_dir, tokenizer_dir  # noqa: E402
from core.models.sdxl import DEMO_SDXL_MODEL  # noqa: E402
from core.models.sdxl_files import TOKENIZER_FOLDERS, sdxl_config_dir  # noqa: E402
from core.training.engine import Trainer  # noqa: E402
from core.training.events import CallbackSink, Finished, StepMetrics  # noqa: E402
from core.training.setup import choose_precision  # noqa: E402
from core.training.vram_forecast import CUDA_CONTEXT_BYTES, VramForecast, forecast_vram  # noqa: E402

# U-Net forward pass, TFLOP per image (torch's FlopCounterMode on the meta device, one
# 77-token caption; see ../shared/reference/stack-notes.md "Arithmetic"). Other sizes scale
# with the pixel count.
UNET_FORWARD_TFLOP = {"sd15": {512: 0.80, 768: 2.15, 1024: 4.67}, "sdxl": {1024: 6.76}}
# A LoRA training step costs about 2x the forward pass; gradient checkpointing runs the
# forward a second time in the backward pass: about 3x.
STEP_FACTOR, STEP_FACTOR_CHECKPOINTED = 2.0, 3.0
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, found
# by the longest name that occurs in torch.cuda.get_device_name().
CARD_PEAK_TFLOPS = {
    "H200": 989.0, "GH200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
    "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
    "RTX 6000 Ada": 364.0, "RTX A6000": 155.0, "RTX 4090": 165.0, "RTX 4080": 97.0,
    "RTX 3090": 71.0, "RTX 3080": 59.0,
}
WARMUP_STEPS = 5  # cuDNN autotuning and allocator growth happen in the first steps
FORECAST_AIM = 0.10  # issue 16: the forecast within 10% of the measured peak allocated
MiB = 1024 * 1024
SD15, SDXL, OWN = "sd15", "sdxl", "own"  # which model a run trains: built here, or the preset's own


@dataclass
class RunSpec:
    preset: str
    resolution: int
    model: str = SD15
    batch: int | None = None  # None: --batch

    @property
    def uses_built_model(self) -> bool:
        return self.model != OWN


@dataclass
class RunResult:
    spec: RunSpec
    precision: str = ""  # configured -> used, e.g. "fp16" or "fp16->no"
    optimizer: str = ""
    completed: bool = False
    losses: list[float] = field(default_factory=list)
    s_per_step: float = float("nan")
    images_per_s: float = float("nan")
    peak_allocated_mb: float = float("nan")
    peak_reserved_mb: float = float("nan")
    engine_peak_mb: float = float("nan")
    mfu: str = ""
    lora_moved: bool = False
    batch: int = 0
    start_allocated_mb: float = 0.0  # left allocated by earlier runs when this one began
    driver_used_mb: float = float("nan")  # the device's used memory (mem_get_info), largest at a step's end
    forecast: VramForecast | None = None
    forecast_failure: str = ""  # why forecast_vram gave none
    problems: list[str] = field(default_factory=list)

    @property
    def own_peak_allocated_mb(self) -> float:
        """What this run added at its peak: what the forecast counts (a fresh process starts at 0)."""
        return self.peak_allocated_mb - self.start_allocated_mb

    @property
    def own_peak_reserved_mb(self) -> float:
        return self.peak_reserved_mb - self.start_allocated_mb

    def forecast_errors(self) -> tuple[float, float]:
        """(vs allocated, vs reserved), as fractions: the forecast's tensors against the run's
        own peak allocated, and its driver figure less the CUDA context (the tensors plus the
        allocator slack) against the run's own peak reserved. NaN where nothing was measured."""
        if self.forecast is None or not self.own_peak_allocated_mb > 0:
            return float("nan"), float("nan")
        tensors = self.forecast.peak / MiB
        allocator = (self.forecast.driver - CUDA_CONTEXT_BYTES) / MiB
        return tensors / self.own_peak_allocated_mb - 1, allocator / self.own_peak_reserved_mb - 1


def card_peak_tflops(name: str) -> float | None:
    for key in sorted(CARD_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return CARD_PEAK_TFLOPS[key]
    return None


def forward_tflop_per_image(resolution: int, model: str = SD15) -> float:
    known = UNET_FORWARD_TFLOP[model]
    if resolution in known:
        return known[resolution]
    reference = min(known)
    return known[reference] * (resolution / reference) ** 2


def build_random_sd15(folder: Path, device: torch.device) -> Path:
    """Full-size SD 1.5 with random weights, as a diffusers folder (fp16 on disk)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    shutil.copytree(sd15_config_dir(), folder)
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation of 1.07 B weights is quick on a GPU
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        module.to(torch.float16).save_pretrained(folder / name, safe_serialization=True)
    del unet, vae, text_encoder
    return folder


def build_random_sdxl(folder: Path, device: torch.device, configs: Path | None = None) -> Path:
    """Full-size SDXL base (3.5 B weights) with random weights, as a diffusers folder (fp16 on
    disk) with both tokenizers, built from ``configs`` (default: the shipped resources/sdxl).

    Each module is built, written and freed in turn: on a GPU in fp32 (a few seconds), on the
    CPU in bf16, which halves the memory (7 GB for the U-Net and encoders) and the time."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    shutil.copytree(configs or sdxl_config_dir(), folder)
    for name in TOKENIZER_FOLDERS:  # the vocabulary, as a downloaded SDXL folder holds it
        for part in ("vocab.json", "merges.txt"):
            shutil.copyfile(tokenizer_dir() / part, folder / name / part)
    builders = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
    }
    torch.manual_seed(0)
    dtype = torch.float32 if device.type == "cuda" else torch.bfloat16
    default = torch.get_default_dtype()
    for name, build in builders.items():
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                module = build()
        finally:
            torch.set_default_dtype(default)
        module.to(torch.float16).save_pretrained(folder / name, safe_serialization=True)
        del module
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return folder


def make_images(folder: Path, resolution: int, count: int) -> Path:
    """Square images with shapes and colours, so the latents are not all alike."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", (resolution, resolution), (30 * i % 255, 90, 200 - 20 * i))
        draw = ImageDraw.Draw(image)
        r = resolution // (3 + i % 3)
        draw.ellipse([r // 2, r // 2, r // 2 + 2 * r, r // 2 + 2 * r], fill=(240, 200 - 25 * i, 60))
        draw.rectangle([resolution // 2, resolution // 3, resolution - 8, resolution - 8], fill=(20, 20, 20 * i))
        image.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"kilnstyle, shape {i}, plain background", encoding="utf-8")
    return folder


def run_config(spec: RunSpec, model: str, images: Path, out: Path, batch: int, steps: int) -> TrainConfig:
    """The preset as shipped, with this check's model, images, batch size and length."""
    config = load_preset(find_preset(spec.preset)).config
    if spec.uses_built_model:
        config.model.base_model = model
    config.dataset.subsets = [SubsetParams(image_dir=str(images))]
    config.dataset.resolution = (spec.resolution, spec.resolution)
    config.dataset.max_bucket_reso = max(config.dataset.max_bucket_reso, spec.resolution)
    config.dataset.min_bucket_reso = min(config.dataset.min_bucket_reso, spec.resolution)
    config.training.batch_size = batch
    config.training.duration, config.training.max_train_steps = Duration.STEPS, steps
    config.schedule.warmup_steps = min(config.schedule.warmup_steps, steps - 1)
    config.sampling.every_n_epochs = config.sampling.every_n_steps = 0
    config.sampling.at_step_0 = False
    config.output.save_every_n_epochs = config.output.save_every_n_steps = 0
    config.output.save_state = False
    config.output.output_dir = str(out)
    config.output.output_name = f"{spec.preset}-{spec.resolution}"
    return config


def lora_moved(path: str | None) -> bool:
    """LoRA's up weights start at zero: after training some must differ from it."""
    if not path:
        return False
    from safetensors.torch import load_file

    ups = [t for key, t in load_file(path).items() if key.endswith("lora_up.weight")]
    return bool(ups) and any(bool(t.float().abs().max() > 0) for t in ups)


def seconds_per_step(stamps: list[float]) -> float:
    skip = min(WARMUP_STEPS, max(len(stamps) - 2, 0))
    deltas = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:])]
    return statistics.median(deltas) if deltas else float("nan")


def train_once(spec: RunSpec, model: str, work: Path, batch: int, steps: int, device: torch.device,
               peak_tflops: float | None) -> RunResult:
    images = make_images(work / f"data-{spec.preset}-{spec.resolution}", spec.resolution, 2 * batch)
    config = run_config(spec, model, images, work / "runs", batch, steps)
    wanted = config.training.mixed_precision
    used, _ = choose_precision(config, device.type == "cuda")
    result = RunResult(spec, precision=wanted.value if used is wanted else f"{wanted.value}->{used.value}",
                       optimizer=config.optimizer.type.value, batch=batch)
    try:  # before the run, as a user sees it (square images of one size: one bucket)
        result.forecast = forecast_vram(config, bucket=(spec.resolution, spec.resolution))
    except Exception as error:  # noqa: BLE001 - reported by the forecast check; the run goes on
        result.forecast_failure = f"{type(error).__name__}: {error}"
    stamps: list[float] = []

    def on_event(event: object) -> None:
        if isinstance(event, StepMetrics):
            stamps.append(time.perf_counter())
            result.losses.append(event.loss)
            result.engine_peak_mb = event.memory_peak_mb
            if device.type == "cuda":  # reserved memory is kept: a step's end sees the run's most so far
                free, total = torch.cuda.mem_get_info(device)
                result.driver_used_mb = max(result.driver_used_mb, (total - free) / MiB) \
                    if math.isfinite(result.driver_used_mb) else (total - free) / MiB

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # so that the reserved peak is this run's, not the cache's
        torch.cuda.reset_peak_memory_stats()
        result.start_allocated_mb = torch.cuda.memory_allocated(device) / MiB
    outcome = Trainer(config, CallbackSink(on_event)).run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        result.peak_allocated_mb = torch.cuda.max_memory_allocated() / MiB
        result.peak_reserved_mb = torch.cuda.max_memory_reserved() / MiB
    result.completed = isinstance(outcome, Finished) and outcome.reason == "completed"
    if not result.completed:
        result.problems.append(f"did not complete: {getattr(outcome, 'summary', outcome)}")
    result.s_per_step = seconds_per_step(stamps)
    result.images_per_s = batch / result.s_per_step if result.s_per_step > 0 else float("nan")
    result.lora_moved = result.completed and lora_moved(outcome.lora_path)
    if len(result.losses) != steps or not all(math.isfinite(x) for x in result.losses):
        result.problems.append(f"losses not all finite over {steps} steps: {result.losses}")
    if result.completed and not result.lora_moved:
        result.problems.append("the LoRA weights did not move")
    if device.type == "cuda" and used is wanted and result.forecast is not None:
        result.problems += recorded_forecast_problems(Path(outcome.run_dir), result.forecast)
    if device.type == "cuda" and result.completed:
        if not result.peak_allocated_mb > 0:
            result.problems.append("no peak VRAM measured")
        elif result.engine_peak_mb > result.peak_allocated_mb + 1:
            result.problems.append(f"the engine reports a peak of {result.engine_peak_mb:.0f} MiB, above "
                                   f"this run's {result.peak_allocated_mb:.0f} MiB (an earlier run's?)")
        result.problems += forecast_problems(result)
    result.mfu = mfu_text(config, spec, result, device, peak_tflops)
    return result


def recorded_forecast_problems(run_dir: Path, forecast: VramForecast) -> list[str]:
    """A run on CUDA records its own forecast in summary.json (core.training.run_forecast), the
    one the Runs tab sets beside the measured peak: it must be the forecast made here."""
    import json

    try:
        recorded = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("vram_forecast")
    except (OSError, ValueError, AttributeError) as error:
        return [f"cannot read the run's summary.json for its recorded forecast: {error}"]
    if not isinstance(recorded, dict) or "peak" not in recorded:
        return [f"the run recorded no VRAM forecast in its summary.json (found {recorded!r})"]
    if recorded["peak"] != forecast.peak or recorded.get("bucket") != list(forecast.bucket):
        return [f"the run recorded a forecast of {recorded['peak']} bytes at {recorded.get('bucket')}, "
                f"the check made {forecast.peak} at {list(forecast.bucket)}"]
    return []


def mfu_text(config: TrainConfig, spec: RunSpec, result: RunResult, device: torch.device,
             peak_tflops: float | None) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    if not spec.uses_built_model:
        return "n/a (demo)"
    if peak_tflops is None:
        return "unknown card"
    factor = STEP_FACTOR_CHECKPOINTED if config.training.gradient_checkpointing else STEP_FACTOR
    achieved = forward_tflop_per_image(spec.resolution, spec.model) * factor * result.images_per_s
    return f"{100 * achieved / peak_tflops:.1f}%"


def forecast_problems(result: RunResult) -> list[str]:
    """The issue-16 aim, on a CUDA measurement: the forecast's tensors within 10% of the peak
    allocated."""
    if result.forecast_failure:
        return [f"no VRAM forecast: {result.forecast_failure}"]
    error, _ = result.forecast_errors()
    if result.forecast is None or not math.isfinite(error) or abs(error) <= FORECAST_AIM:
        return []
    return [f"the VRAM forecast ({result.forecast.peak / MiB:.0f} MiB of tensors) is {100 * error:+.1f}% off "
            f"the measured peak allocated ({result.own_peak_allocated_mb:.0f} MiB); "
            f"the aim is within {100 * FORECAST_AIM:.0f}%"]


def forecast_check_line(results: list[RunResult], device: torch.device) -> str:
    """The summary of the forecast check: informational without a CUDA measurement."""
    aim = f"forecast within {100 * FORECAST_AIM:.0f}% of the peak allocated"
    if device.type != "cuda":
        missing = [f"{label(r.spec)} ({r.forecast_failure})" for r in results if r.forecast_failure]
        return (f"{aim}: informational on the CPU (no CUDA measurement; forecasts printed for a CUDA card)"
                + (f"; no forecast for {', '.join(missing)}" if missing else ""))
    errors = [(abs(r.forecast_errors()[0]), label(r.spec)) for r in results
              if math.isfinite(r.forecast_errors()[0])]
    if not errors or len(errors) < len(results):
        return f"{aim}: FAILED ({len(results) - len(errors)} run(s) without a forecast or a measurement)"
    worst, where = max(errors)
    return (f"{aim}: {'ok' if worst <= FORECAST_AIM else 'FAILED'} (worst {100 * worst:.1f}% in {where}, "
            f"{worst / FORECAST_AIM:.2f} of the aim)")


def cross_run_problems(results: list[RunResult], device: torch.device) -> list[str]:
    problems = []
    ran = {r.precision.split("->")[-1] for r in results if r.completed}
    configured = {r.precision.split("->")[0] for r in results if r.completed}
    if device.type == "cuda":
        if not {"fp16", "bf16"} <= ran:
            problems.append(f"fp16 and bf16 must both run; ran {sorted(ran)}")
        largest = max(range(len(results)), key=lambda i: results[i].peak_allocated_mb
                      if math.isfinite(results[i].peak_allocated_mb) else -1)
        if largest + 1 < len(results):
            after, top = results[largest + 1], results[largest]
            if after.completed and not after.peak_allocated_mb < top.peak_allocated_mb:
                problems.append(f"the run after the largest one ({label(after.spec)}) reports a peak of "
                                f"{after.peak_allocated_mb:.0f} MiB, not below the largest's "
                                f"{top.peak_allocated_mb:.0f} MiB: peaks are not per run")
    elif not {"fp16", "bf16"} <= configured:
        problems.append(f"the fp16 and the bf16 preset must both run; ran {sorted(configured)}")
    return problems


def label(spec: RunSpec) -> str:
    return f"{spec.preset} {spec.resolution}px"


def fmt(value: float, pattern: str) -> str:
    return pattern.format(value) if math.isfinite(value) else "-"


def print_table(results: list[RunResult]) -> None:
    header = ("run", "precision", "optimizer", "batch", "s/step", "img/s", "peak alloc MiB",
              "peak reserved MiB", "engine peak MiB", "MFU", "checks")
    rows = [header]
    for r in results:
        rows.append((label(r.spec), r.precision, r.optimizer, str(r.batch), fmt(r.s_per_step, "{:.3f}"),
                     fmt(r.images_per_s, "{:.2f}"), fmt(r.peak_allocated_mb, "{:.0f}"),
                     fmt(r.peak_reserved_mb, "{:.0f}"), fmt(r.engine_peak_mb, "{:.0f}"), r.mfu,
                     "ok" if not r.problems else "FAILED"))
    print_rows(rows)


def print_forecast_table(results: list[RunResult]) -> None:
    """The forecast beside the measurement. "own" = measured less what earlier runs left
    allocated when the run began; error = forecast / measured - 1; "/aim" = |error| / 10%."""
    header = ("run", "bucket", "batch", "forecast tensors MiB", "own peak alloc MiB", "error", "/aim",
              "forecast driver MiB", "own peak reserved MiB", "error vs reserved", "device used MiB")
    rows = [header]
    for r in results:
        error, reserved_error = r.forecast_errors()
        f = r.forecast
        rows.append((label(r.spec), f"{r.spec.resolution}x{r.spec.resolution}", str(r.batch),
                     "-" if f is None else f"{f.peak / MiB:.0f}", fmt(r.own_peak_allocated_mb, "{:.0f}"),
                     fmt(100 * error, "{:+.1f}%"), fmt(abs(error) / FORECAST_AIM, "{:.2f}"),
                     "-" if f is None else f"{f.driver / MiB:.0f}", fmt(r.own_peak_reserved_mb, "{:.0f}"),
                     fmt(100 * reserved_error, "{:+.1f}%"), fmt(r.driver_used_mb, "{:.0f}")))
    print_rows(rows)


def print_rows(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU at 256 px for 2 steps "
                                                           "(the default where there is no CUDA)")
    parser.add_argument("--tiny", action="store_true", help="use the demo models instead of full-size "
                                                            "SD 1.5 and SDXL (CI: proves the script, quickly)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (15 on a GPU, 2 on a CPU)")
    parser.add_argument("--batch", type=int, default=3)
    return parser.parse_args(argv)


def run_specs(on_gpu: bool) -> list[RunSpec]:
    """The runs, in order: the bf16 Prodigy run after the largest SD 1.5 one, and the demo after
    SDXL, each reporting its own smaller peak. On the CPU every run at 256 px."""
    sizes = (512, 768, 1024) if on_gpu else (256,)
    specs = [RunSpec("sd15-lora-8gb", size) for size in sizes]
    return specs + [RunSpec("sd15-prodigy", sizes[0]), RunSpec("sdxl-lora-8gb", 1024 if on_gpu else 256, SDXL, batch=1),
                    RunSpec("demo", 256, OWN)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    steps = args.steps or (15 if on_gpu else 2)
    specs = run_specs(on_gpu)
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    peak = card_peak_tflops(name) if on_gpu else None
    print(f"device: {name}; dense bf16 peak: "
          f"{f'{peak:g} TFLOP/s' if peak else ('n/a' if not on_gpu else 'unknown card')}; torch {torch.__version__}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorakiln-gpu-check-") as tmp:
        work = Path(tmp)
        models = {SD15: DEMO_MODEL, SDXL: DEMO_SDXL_MODEL, OWN: ""}
        if not args.tiny:
            for key, title, build in ((SD15, "SD 1.5", build_random_sd15), (SDXL, "SDXL", build_random_sdxl)):
                print(f"building full-size {title} with random weights…", flush=True)
                began = time.perf_counter()
                models[key] = str(build(work / f"{key}-random", device))
                print(f"  built and written in {time.perf_counter() - began:.0f} s", flush=True)
        results = []
        for spec in specs:
            print(f"training {label(spec)}…", flush=True)
            results.append(train_once(spec, models[spec.model], work, spec.batch or args.batch, steps, device, peak))
    problems = [f"{label(r.spec)}: {p}" for r in results for p in r.problems]
    problems += cross_run_problems(results, device)
    print()
    print_table(results)
    print()
    print_forecast_table(results)
    print()
    print(f"{len(results)} runs of {steps} steps in {time.perf_counter() - started:.0f} s; FLOPs: the "
          "U-Net only, x3 per image with gradient checkpointing (x2 without)")
    print(forecast_check_line(results, device))
    for problem in problems:
        print(f"FAILED: {problem}")
    print("all checks passed" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
