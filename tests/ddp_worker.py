"""Trains a preset in this process, alone or as one rank of ``torchrun``, with a loss path
that draws nothing at random, then saves this rank's LoRA weights to OUT/rank<N>.pt.

Used by tests/test_ddp.py: python -m tests.ddp_worker PRESET OUT
"""

import sys
from pathlib import Path

import torch

import core.training.step as step
from core.config.presets import load_preset
from core.training.checkpoint import trainable_state
from core.training.engine import Trainer
from core.training.events import Failed, ListSink


def per_sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator,
                     adaptive_noise_scale: float = 0.0) -> torch.Tensor:
    # Each process draws from its own generator, seeded alike, so two processes would give
    # their two samples the same noise where one process gives them different noise. Noise
    # made from the sample itself is the same however the samples are spread.
    return torch.sin(latents * 3.0 + 1.0)


def fixed_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
    return torch.full((batch,), num_train_timesteps // 2, dtype=torch.long, device=device)


def main(preset: str, out: str) -> None:
    step.sample_noise, step.sample_timesteps = per_sample_noise, fixed_timesteps
    real_finish = Trainer._finish

    def finish(self: Trainer, reason: str):  # noqa: ANN202
        rank = self.accelerator.process_index
        torch.save(trainable_state(self.network.trained), Path(out) / f"rank{rank}.pt")
        return real_finish(self, reason)

    Trainer._finish = finish
    result = Trainer(load_preset(preset).config, ListSink()).run()
    if isinstance(result, Failed):
        raise SystemExit(result.traceback)


if __name__ == "__main__":
    main(*sys.argv[1:])
