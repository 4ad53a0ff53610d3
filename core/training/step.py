"""One forward pass of LoRA training: latents, text states, noise, prediction, loss."""

from __future__ import annotations

import math
from typing import Callable

import torch

from core.config.schema import TrainConfig
from core.data.pipeline import Batch
from core.models.components import ModelComponents
from core.models.family import Family, TextConditioning
from core.training.loss import debiased_weights, min_snr_weights, sample_noise, sample_timesteps, weighted_loss
from core.training.noise import input_noise, offset_strength, pyramid_noise


class StepComputer:
    def __init__(self, config: TrainConfig, family: Family, components: ModelComponents, device: torch.device,
                 generator: torch.Generator, autocast: Callable,
                 prepared: dict[str, torch.nn.Module] | None = None) -> None:
        """``prepared`` holds what accelerate made of each trained component ("unet",
        "text_encoder", ...); under DDP it is the wrapper whose forward pass makes backward
        average the gradients across processes, so a trained model is always called through it."""
        self.config = config
        self.family = family
        self.c = components
        prepared = prepared or {}
        self.unet = prepared.get("unet", components.unet)
        self.text_encoders = {name: prepared.get(name, module) for name, module in components.text_encoders.items()}
        self.device = device
        self.generator = generator
        self.autocast = autocast
        scheduler = components.noise_scheduler
        self.v_prediction = scheduler.config.prediction_type == "v_prediction"
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device)
        self.train_text_encoder = config.network.train_text_encoder
        self.text_cache = None  # a text_cache.TextStateCache when the captions' conditioning is cached

    @torch.no_grad()
    def latents(self, batch: Batch) -> torch.Tensor:
        # non_blocking: the loader pins its batches on CUDA, so the copy overlaps the launch.
        if batch.latents is not None:
            return batch.latents.to(self.device, torch.float32, non_blocking=True)
        vae_dtype = next(self.c.vae.parameters()).dtype  # half on a GPU unless no_half_vae
        distribution = self.c.vae.encode(batch.pixels.to(self.device, vae_dtype, non_blocking=True)).latent_dist
        noise = torch.randn(distribution.mean.shape, generator=self.generator).to(self.device)
        return (distribution.mean.float() + distribution.std.float() * noise) * self.c.vae_scale_factor

    def text(self, captions: list[str]) -> TextConditioning:
        """The captions' conditioning, as the family computes it (call inside autocast, as the
        step does)."""
        with torch.set_grad_enabled(self.train_text_encoder):
            return self.family.encode_text(self.c, self.text_encoders, captions,
                                           clip_skip=self.config.model.clip_skip,
                                           max_token_length=self.config.training.max_token_length,
                                           device=self.device)

    def loss(self, batch: Batch) -> torch.Tensor:
        latents = self.latents(batch)
        training = self.config.training
        with self.autocast():
            if self.text_cache is not None:
                text = self.text_cache.conditioning(batch.captions, self.device)
            else:
                text = self.text(batch.captions)
            noise = sample_noise(latents, offset_strength(training, self.generator), self.generator,
                                 training.adaptive_noise_scale)
            if training.multires_noise_iterations:
                noise = pyramid_noise(noise, training.multires_noise_iterations, training.multires_noise_discount,
                                      self.generator)
            timesteps = sample_timesteps(latents.shape[0], self.c.noise_scheduler.config.num_train_timesteps,
                                         self.generator, self.device)
            noisy = self.c.noise_scheduler.add_noise(latents, input_noise(noise, training, self.generator), timesteps)
            prediction = self.unet(noisy, timesteps, **self.family.unet_inputs(text, batch)).sample
        if self.v_prediction:
            target = self.c.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        snr_weights = None
        if training.min_snr_gamma:
            snr_weights = min_snr_weights(self.alphas_cumprod, timesteps, training.min_snr_gamma,
                                          self.v_prediction)
        if training.debiased_estimation_loss:  # after min-SNR, as sd-scripts' post_process_loss
            debiased = debiased_weights(self.alphas_cumprod, timesteps, self.v_prediction)
            snr_weights = debiased if snr_weights is None else snr_weights * debiased
        return weighted_loss(prediction, target, batch.loss_weights, snr_weights, batch.masks)


def train_micro_batch(accelerator, computer: StepComputer, optimizer, models: list[torch.nn.Module],  # noqa: ANN001
                      guard, batch: Batch, step: int, max_grad_norm: float, grad_accum: int,  # noqa: ANN001
                      sync: bool) -> float:
    """One micro-batch of an accumulation window: the forward pass, the NaN check (``guard``,
    a faults.NonFiniteGuard), backward, and when ``sync`` closes the window the optimizer step,
    or for a step with a bad loss its gradients dropped with the weights and the optimizer
    state untouched. Returns the micro-batch's loss.

    The caller decides where windows close (every ``grad_accum`` micro-batches and at the end
    of each epoch), because the loader is not one of accelerate's: left to itself accelerate
    never closes the epoch's last, short window, and its gradient would leak into the next
    epoch while the run ends a step short of the plan. As in sd-scripts (through accelerate),
    every micro-batch's loss is divided by ``grad_accum``, a short window's included.
    """
    from contextlib import ExitStack

    params = [p for group in optimizer.param_groups for p in group["params"]]
    with ExitStack() as no_sync:
        if not sync and accelerator.num_processes > 1:
            for model in models:  # gradients are averaged across processes once, at the window's end
                no_sync.enter_context(accelerator.no_sync(model))
        loss = computer.loss(batch)
        # Backward is queued before the loss is read: reading it (.item()) waits for the GPU,
        # which would then idle while the CPU launches the backward pass. A bad loss's
        # gradients never reach the weights: its step is skipped and they are dropped below,
        # or the run stops. Every process runs the same collective operations either way.
        accelerator.backward(loss / grad_accum)
    loss = loss.detach()
    value = math.nan
    if guard.must_check_before_step:
        value = float(loss.item())
        guard.accept(step, value, batch.keys)
    if sync:
        bad = guard.step_is_bad
        if accelerator.num_processes > 1:  # one process's bad loss skips the step on all
            flag = torch.tensor([float(bad)], device=accelerator.device)
            bad = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
            guard.mark_bad_elsewhere(bad)
        if not bad:
            if max_grad_norm:
                accelerator.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if not guard.must_check_before_step:  # read once the optimizer step is queued too
        value = float(loss.item())
        guard.accept(step, value, batch.keys)
    return value
