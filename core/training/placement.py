"""Where the frozen parts of the model live, and in which dtype: the VAE's precision, the
VAE and text encoder leaving the GPU once their work is cached, and whether caption
states can be cached at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from core.config.schema import SubsetParams, TextEncoderCache, TrainConfig
from core.models.family import Family

CPU = torch.device("cpu")


def vae_dtype(config: TrainConfig, family: Family, weight_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The VAE's dtype: the frozen weights' half precision on a GPU, as sd-scripts does, so
    caching latents needs half the VRAM; fp32 on a CPU (its kernels want fp32 anyway), when
    model.no_half_vae asks for it, and in fp16 for a family whose VAE overflows in it (SDXL's
    original VAE gives NaN in fp16; bf16 has fp32's range and is safe)."""
    if device.type != "cuda" or config.model.no_half_vae:
        return torch.float32
    if weight_dtype is torch.float16 and family.vae_fp16_unsafe:
        return torch.float32
    return weight_dtype


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    for param in module.parameters():
        return param.dtype
    return torch.float32


def module_device(module: torch.nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return CPU


def offload(module: torch.nn.Module) -> None:
    """Move a frozen module to the CPU and give its VRAM back to the allocator."""
    module.to(CPU)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """``module`` on ``device`` for the block, and back where it was afterwards: sampling
    borrows an offloaded VAE or text encoder for a moment (a copy over PCIe, ~0.1 s for
    SD's VAE) instead of keeping it on the GPU for the whole run."""
    home = module_device(module)
    if home == device or home.type == device.type == "cpu":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        offload(module) if home.type == "cpu" else module.to(home)


def caption_is_fixed(options: SubsetParams) -> bool:
    """True when a subset's captions train the same every epoch: no shuffle, no dropout."""
    return not (options.shuffle_caption or options.caption_dropout_rate > 0
                or options.caption_tag_dropout_rate > 0)


def can_cache_text_states(config: TrainConfig, subsets: list[SubsetParams]) -> bool:
    """Text-encoder outputs can be computed once per caption (as sd-scripts'
    cache_text_encoder_outputs) when the encoder is not trained and every caption is fixed,
    unless dataset.text_encoder_cache is off."""
    return config.dataset.text_encoder_cache is not TextEncoderCache.OFF and \
        not config.network.train_text_encoder and all(caption_is_fixed(s) for s in subsets)
