"""The diffusion training objective as sd-scripts computes it: noise, targets, weights."""

from __future__ import annotations

import torch


def sample_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise, plus a per-sample, per-channel constant when noise_offset is set
    (it lets the model learn overall brightness, for very dark or bright images)."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=torch.float32)
        noise = noise + noise_offset * offset.to(latents.device, latents.dtype)
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


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])


def weighted_loss(prediction: torch.Tensor, target: torch.Tensor, loss_weights: torch.Tensor,
                  snr_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of each sample's MSE times its weight (prior loss weight for
    regularisation images) and, with min-SNR, its SNR weight."""
    loss = per_sample_mse(prediction, target) * loss_weights.to(prediction.device)
    if snr_weights is not None:
        loss = loss * snr_weights.to(loss.device)
    return loss.mean()
