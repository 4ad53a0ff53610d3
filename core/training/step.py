"""One forward pass of LoRA training: latents, text states, noise, prediction, loss."""

from __future__ import annotations

from typing import Callable

import torch

from core.config import TrainConfig
from core.pipeline import Batch
from core.training.loss import min_snr_weights, sample_noise, sample_timesteps, weighted_loss
from core.training.text import encode, tokenize


class StepComputer:
    def __init__(self, config: TrainConfig, components, device: torch.device,  # noqa: ANN001
                 generator: torch.Generator, autocast: Callable) -> None:
        self.config = config
        self.c = components
        self.device = device
        self.generator = generator
        self.autocast = autocast
        scheduler = components.noise_scheduler
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device)
        self.train_text_encoder = config.network.train_text_encoder

    @torch.no_grad()
    def latents(self, batch: Batch) -> torch.Tensor:
        if batch.latents is not None:
            return batch.latents.to(self.device, torch.float32)
        distribution = self.c.vae.encode(batch.pixels.to(self.device, torch.float32)).latent_dist
        noise = torch.randn(distribution.mean.shape, generator=self.generator).to(self.device)
        return (distribution.mean + distribution.std * noise) * self.c.vae_scale_factor

    def loss(self, batch: Batch) -> torch.Tensor:
        latents = self.latents(batch)
        ids = tokenize(self.c.tokenizer, batch.captions).to(self.device)
        training = self.config.training
        with self.autocast():
            with torch.set_grad_enabled(self.train_text_encoder):
                states = encode(self.c.text_encoder, ids, self.config.model.clip_skip)
            noise = sample_noise(latents, training.noise_offset, self.generator)
            timesteps = sample_timesteps(latents.shape[0], self.c.noise_scheduler.config.num_train_timesteps,
                                         self.generator, self.device)
            noisy = self.c.noise_scheduler.add_noise(latents, noise, timesteps)
            prediction = self.c.unet(noisy, timesteps, states).sample
        if self.v_prediction:
            target = self.c.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        snr_weights = None
        if training.min_snr_gamma:
            snr_weights = min_snr_weights(self.alphas_cumprod, timesteps, training.min_snr_gamma,
                                          self.v_prediction)
        return weighted_loss(prediction, target, batch.loss_weights, snr_weights)
