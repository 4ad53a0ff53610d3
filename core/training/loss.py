"""The diffusion training objective as sd-scripts computes it: noise, targets, weights."""

from __future__ import annotations

import torch


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator,
                 adaptive_noise_scale: float = 0.0) -> torch.Tensor:
    """Gaussian noise, plus a per-sample, per-channel constant when noise_offset is set
    (it lets the model learn overall brightness, for very dark or bright images).

    With adaptive_noise_scale the offset's strength grows (or, negative, shrinks, never
    below 0) with each channel's absolute mean latent, as sd-scripts' apply_noise_offset."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    if noise_offset:
        strength: float | torch.Tensor = noise_offset
        if adaptive_noise_scale:
            channel_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            strength = torch.clamp(noise_offset + adaptive_noise_scale * channel_mean, min=0.0)
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=torch.float32)
        noise = noise + strength * offset.to(latents.device, latents.dtype)
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator,
                     device: torch.device) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator).to(device)


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps]
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al., 2023): min(SNR, gamma) / SNR for epsilon
    prediction, min(SNR, gamma) / (SNR + 1) for v-prediction."""
    ratio = snr(alphas_cumprod, timesteps)
    clipped = torch.minimum(ratio, torch.full_like(ratio, gamma))
    return clipped / (ratio + 1.0) if v_prediction else clipped / ratio


def debiased_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation loss weights as sd-scripts applies them: 1/sqrt(SNR) for epsilon
    prediction, 1/(SNR + 1) for v-prediction, with SNR capped at 1000 (timestep 0's SNR is
    huge, and its weight would vanish)."""
    ratio = torch.clamp(snr(alphas_cumprod, timesteps), max=1000.0)
    return 1.0 / (ratio + 1.0) if v_prediction else 1.0 / torch.sqrt(ratio)


def latent_masks(masks: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] pixel masks averaged down to the latents' (h, w), as sd-scripts'
    apply_masked_loss does (area interpolation): a latent pixel's weight is the share of its
    8x8 image pixels that are masked in."""
    return torch.nn.functional.interpolate(masks.float(), size=latent_size, mode="area")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor,
                   masks: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's mean squared error; with ``masks`` ([B, 1, H, W] in pixels) each latent
    pixel's error is weighted by its mask before the mean. As in sd-scripts the mean is over
    all pixels, not divided by the mask's area: a half-masked image counts half as much."""
    loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none")
    if masks is not None:
        loss = loss * latent_masks(masks.to(loss.device), tuple(loss.shape[-2:]))
    return loss.mean(dim=[1, 2, 3])


def weighted_loss(prediction: torch.Tensor, target: torch.Tensor, loss_weights: torch.Tensor,
                  snr_weights: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of each sample's (masked) MSE times its weight (prior loss weight
    for regularisation images) and, with min-SNR, its SNR weight. The order is sd-scripts':
    mask per pixel, mean per sample, then the per-sample weights."""
    loss = per_sample_mse(prediction, target, masks) * loss_weights.to(prediction.device)
    if snr_weights is not None:
        loss = loss * snr_weights.to(loss.device)
    return loss.mean()
