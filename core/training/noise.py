"""The noise options of sd-scripts beyond the plain offset: multires (pyramid) noise and input
perturbation. Every random draw comes from the engine's generator, in sd-scripts' order and
shapes (the random noise-offset strength is drawn just before the noise), so a seed repeats a run."""

from __future__ import annotations

import torch

from core.config.schema import TrainingParams


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Multires noise: ``noise`` plus Gaussian noise drawn at ever smaller sizes (each level
    a random 2-4 times smaller than the last, weighted by ``discount`` per level) and
    upscaled bilinearly, rescaled to unit standard deviation. Stops early once a level is one
    latent pixel wide or high, as sd-scripts' pyramid_noise_like does."""
    batch, channels, height, width = noise.shape
    upsample = torch.nn.Upsample(size=(height, width), mode="bilinear")
    noise = noise.clone()
    for level in range(iterations):
        # sd-scripts draws the ratio from Python's random; ours comes from the run's generator.
        ratio = float(torch.rand((), generator=generator)) * 2 + 2
        level_h, level_w = max(1, int(height / ratio**level)), max(1, int(width / ratio**level))
        drawn = torch.randn((batch, channels, level_h, level_w), generator=generator, dtype=torch.float32)
        noise += upsample(drawn.to(noise.device, noise.dtype)) * discount**level
        if level_h == 1 or level_w == 1:
            break
    return noise / noise.std()


def offset_strength(training: TrainingParams, generator: torch.Generator) -> float:
    """This step's noise offset: noise_offset, or with noise_offset_random_strength a uniform
    draw in [0, noise_offset) (sd-scripts: torch.rand(1) * noise_offset; adaptive_noise_scale
    is added to it afterwards)."""
    if training.noise_offset and training.noise_offset_random_strength:
        return float(torch.rand(1, generator=generator)) * training.noise_offset
    return training.noise_offset


def input_noise(noise: torch.Tensor, training: TrainingParams, generator: torch.Generator) -> torch.Tensor:
    """The noise mixed into the U-Net's input: ``noise`` itself, or with ip_noise_gamma that
    plus gamma (or a uniform fraction of it, drawn once per step) times fresh noise. The
    target stays ``noise``: the model learns to predict the unperturbed noise."""
    gamma = training.ip_noise_gamma
    if not gamma:
        return noise
    strength = gamma
    if training.ip_noise_gamma_random_strength:
        strength = float(torch.rand(1, generator=generator)) * gamma
    extra = torch.randn(noise.shape, generator=generator, dtype=torch.float32)
    return noise + strength * extra.to(noise.device, noise.dtype)
