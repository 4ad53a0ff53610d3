#!/usr/bin/env python3
"""GPU check: the whole training path on one CUDA card in a few minutes, with true figures.

    .venv/bin/python benchmarks/gpu_check.py            # on a CUDA card: about 2-5 minutes
    .venv/bin/python benchmarks/gpu_check.py --cpu      # the same runs on the CPU at 256 px
    .venv/bin/python benchmarks/gpu_check.py --cpu --tiny   # the demo model instead (CI)

It builds full-size SD 1.5 from the shipped configs (resources/sd15) with random weights,
so nothing is downloaded, and writes it as a diffusers folder that the engine loads like
any model. Then it trains through the real engine (core.training.engine.Trainer), on
generated images, with each built-in preset's settings as shipped (optimizer, precision,
network, gradient checkpointing) and only the dataset, batch size and step count set here:

    sd15-lora-8gb (fp16, AdamW8bit) at 512, 768 and 1024 px, batch 3, 15 steps
    sd15-prodigy  (bf16, Prodigy)   at 512 px, after the 1024 run
    demo          (its tiny model)  at 256 px

For each run it prints seconds per step and images per second (median over the steps
after the first five), the peak VRAM allocated and reserved (reset before each run), the
engine's own peak figure, and the model FLOP utilisation against the card's dense bf16
peak. It checks that every run completed with finite losses, that the LoRA weights moved,
that the run after the largest one reports its own, smaller peak, and that fp16 and bf16
both ran. It prints one table and exits 1 if any check failed.

On a machine without CUDA (or with --cpu) it runs the same list at 256 px for 2 steps:
proof that the script works, not a measurement.
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

from core.config.schema import DEMO_MODEL, Duration, MixedPrecision, SubsetParams, TrainConfig  # noqa: E402
from core.config.presets import find_preset, load_preset  # noqa: E402
from core.models.sd15_files import sd15_config_dir  # noqa: E402
from core.training.engine import Trainer  # noqa: E402
from core.training.events import CallbackSink, Finished, StepMetrics  # noqa: E402
from core.training.setup import choose_precision  # noqa: E402

# SD 1.5 U-Net forward pass, TFLOP per image (torch's FlopCounterMode; see
# ../shared/reference/stack-notes.md "Arithmetic"). Other sizes scale with the pixel count.
UNET_FORWARD_TFLOP = {512: 0.80, 768: 2.15, 1024: 4.67}
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
MiB = 1024 * 1024


@dataclass
class RunSpec:
    preset: str
    resolution: int
    uses_sd15: bool = True  # False: the preset's own (demo) model


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
    problems: list[str] = field(default_factory=list)


def card_peak_tflops(name: str) -> float | None:
    for key in sorted(CARD_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return CARD_PEAK_TFLOPS[key]
    return None


def forward_tflop_per_image(resolution: int) -> float:
    if resolution in UNET_FORWARD_TFLOP:
        return UNET_FORWARD_TFLOP[resolution]
    return UNET_FORWARD_TFLOP[512] * (resolution / 512) ** 2


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
    if spec.uses_sd15:
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
    images = make_images(work / f"data-{spec.resolution}", spec.resolution, 2 * batch)
    config = run_config(spec, model, images, work / "runs", batch, steps)
    wanted = config.training.mixed_precision
    used, _ = choose_precision(config, device.type == "cuda")
    result = RunResult(spec, precision=wanted.value if used is wanted else f"{wanted.value}->{used.value}",
                       optimizer=config.optimizer.type.value)
    stamps: list[float] = []

    def on_event(event: object) -> None:
        if isinstance(event, StepMetrics):
            stamps.append(time.perf_counter())
            result.losses.append(event.loss)
            result.engine_peak_mb = event.memory_peak_mb

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # so that the reserved peak is this run's, not the cache's
        torch.cuda.reset_peak_memory_stats()
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
    if device.type == "cuda" and result.completed:
        if not result.peak_allocated_mb > 0:
            result.problems.append("no peak VRAM measured")
        elif result.engine_peak_mb > result.peak_allocated_mb + 1:
            result.problems.append(f"the engine reports a peak of {result.engine_peak_mb:.0f} MiB, above "
                                   f"this run's {result.peak_allocated_mb:.0f} MiB (an earlier run's?)")
    result.mfu = mfu_text(config, spec, result, device, peak_tflops)
    return result


def mfu_text(config: TrainConfig, spec: RunSpec, result: RunResult, device: torch.device,
             peak_tflops: float | None) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    if not spec.uses_sd15:
        return "n/a (demo)"
    if peak_tflops is None:
        return "unknown card"
    factor = STEP_FACTOR_CHECKPOINTED if config.training.gradient_checkpointing else STEP_FACTOR
    achieved = forward_tflop_per_image(spec.resolution) * factor * result.images_per_s
    return f"{100 * achieved / peak_tflops:.1f}%"


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


def print_table(results: list[RunResult], batch: int) -> None:
    header = ("run", "precision", "optimizer", "batch", "s/step", "img/s", "peak alloc MiB",
              "peak reserved MiB", "engine peak MiB", "MFU", "checks")
    rows = [header]
    for r in results:
        rows.append((label(r.spec), r.precision, r.optimizer, str(batch), fmt(r.s_per_step, "{:.3f}"),
                     fmt(r.images_per_s, "{:.2f}"), fmt(r.peak_allocated_mb, "{:.0f}"),
                     fmt(r.peak_reserved_mb, "{:.0f}"), fmt(r.engine_peak_mb, "{:.0f}"), r.mfu,
                     "ok" if not r.problems else "FAILED"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU at 256 px for 2 steps "
                                                           "(the default where there is no CUDA)")
    parser.add_argument("--tiny", action="store_true", help="use the demo model instead of full-size "
                                                            "SD 1.5 (CI: proves the script, quickly)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (15 on a GPU, 2 on a CPU)")
    parser.add_argument("--batch", type=int, default=3)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    steps = args.steps or (15 if on_gpu else 2)
    sizes = (512, 768, 1024) if on_gpu else (256,)
    specs = [RunSpec("sd15-lora-8gb", size) for size in sizes]
    specs += [RunSpec("sd15-prodigy", sizes[0]), RunSpec("demo", 256, uses_sd15=False)]
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    peak = card_peak_tflops(name) if on_gpu else None
    print(f"device: {name}; dense bf16 peak: "
          f"{f'{peak:g} TFLOP/s' if peak else ('n/a' if not on_gpu else 'unknown card')}; torch {torch.__version__}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorakiln-gpu-check-") as tmp:
        work = Path(tmp)
        if args.tiny:
            model = DEMO_MODEL
        else:
            print("building full-size SD 1.5 with random weights…", flush=True)
            model = str(build_random_sd15(work / "sd15-random", device))
        results = []
        for spec in specs:
            print(f"training {label(spec)}…", flush=True)
            results.append(train_once(spec, model, work, args.batch, steps, device, peak))
    problems = [f"{label(r.spec)}: {p}" for r in results for p in r.problems]
    problems += cross_run_problems(results, device)
    print()
    print_table(results, args.batch)
    print()
    print(f"{len(results)} runs of {steps} steps in {time.perf_counter() - started:.0f} s; FLOPs: SD 1.5 "
          "U-Net only, x3 per image with gradient checkpointing (x2 without)")
    for problem in problems:
        print(f"FAILED: {problem}")
    print("all checks passed" if not problems else f"{len(problems)} check(s) failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
