#!/usr/bin/env python3
"""Benchmark: the engine's time per step against a minimal hand-written loop.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_engine.py [--steps 60] [--resolution 256]

Both train LoRA (rank 4, U-Net + text encoder, AdamW, batch 2) on the tiny demo model with
the same images' latents, measured in the same run, alternating engine / reference runs
so that a busy machine affects both alike. The reference is what a person would write
with diffusers + peft directly: precomputed latents, tokenize, text encoder, noise,
U-Net forward and backward, optimizer and scheduler step. The engine adds its bucket
batches, metrics, events and run folder. Prints seconds per step and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.config.schema import DEMO_MODEL, Duration, LatentCache, OptimizerType, Scheduler, SubsetParams, TrainConfig  # noqa: E402
from core.training.engine import Trainer  # noqa: E402
from core.training.events import CallbackSink, StepMetrics  # noqa: E402

WARMUP = 5


def engine_config(steps: int, resolution: int, out: Path) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir="builtin:demo/dataset", kohya_layout=True)]
    config.dataset.resolution = (resolution, resolution)
    config.dataset.enable_bucket = False  # one bucket, so both loops see the same tensor shapes
    config.dataset.latent_cache = LatentCache.MEMORY
    config.network.dim, config.network.alpha = 4, 4.0
    config.optimizer.type, config.optimizer.learning_rate = OptimizerType.ADAMW, 1e-4
    config.schedule.scheduler = Scheduler.CONSTANT
    config.training.batch_size = 2
    config.training.duration, config.training.max_train_steps = Duration.STEPS, steps
    config.training.mixed_precision = config.training.mixed_precision.NO
    config.training.max_grad_norm = 0.0
    config.output.output_dir = str(out)
    return config


def time_engine(steps: int, resolution: int) -> float:
    stamps: list[float] = []

    def on_event(event) -> None:  # noqa: ANN001
        if isinstance(event, StepMetrics):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        Trainer(engine_config(steps, resolution, Path(out)), CallbackSink(on_event)).run()
    deltas = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    return statistics.median(deltas)


def time_reference(steps: int, resolution: int) -> float:
    from peft import LoraConfig, inject_adapter_in_model

    from core.models.base_model import build_demo_model

    torch.manual_seed(0)
    c = build_demo_model(0)
    c.unet.requires_grad_(False)
    c.text_encoders["text_encoder"].requires_grad_(False)
    unet_targets = ["proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=unet_targets), c.unet)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj",
                                                                           "out_proj", "fc1", "fc2"]), c.text_encoders["text_encoder"])
    params = [p for m in (c.unet, c.text_encoders["text_encoder"]) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    latent = resolution // 8
    with torch.no_grad():
        pixels = torch.rand(8, 3, resolution, resolution) * 2 - 1
        latents = c.vae.encode(pixels).latent_dist.sample() * c.vae_scale_factor
    captions = ["kilnstyle, vase, blue glaze, white background", "kilnstyle, bowl, red glaze, wooden table"]
    c.unet.train()
    c.text_encoders["text_encoder"].train()
    stamps = []
    for step in range(steps):
        batch = latents[(2 * step) % 8:(2 * step) % 8 + 2]
        ids = c.tokenizers["text_encoder"](captions, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
        states = c.text_encoders["text_encoder"](ids)[0]
        noise = torch.randn_like(batch)
        t = torch.randint(0, 1000, (2,))
        noisy = c.noise_scheduler.add_noise(batch, noise, t)
        loss = torch.nn.functional.mse_loss(c.unet(noisy, t, states).sample, noise)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.item())  # the engine reads the loss every step too
        stamps.append(time.perf_counter())
        assert batch.shape[-1] == latent
    deltas = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1:])]
    return statistics.median(deltas)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    engine, reference = [], []
    for _ in range(args.rounds):  # alternate, so background load hits both
        engine.append(time_engine(args.steps, args.resolution))
        reference.append(time_reference(args.steps, args.resolution))
    e, r = min(engine), min(reference)
    print(f"tiny demo model, {args.resolution}x{args.resolution}, batch 2, rank 4, U-Net + text encoder, CPU "
          f"({torch.get_num_threads()} threads)")
    print(f"engine:    {e * 1000:7.1f} ms/step (best median of {args.rounds} runs: "
          f"{', '.join(f'{x * 1000:.1f}' for x in engine)})")
    print(f"reference: {r * 1000:7.1f} ms/step ({', '.join(f'{x * 1000:.1f}' for x in reference)})")
    print(f"engine / reference = {e / r:.3f}")


if __name__ == "__main__":
    main()
