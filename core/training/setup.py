"""Building what a run trains with: devices and precision, models with LoRA, optimizer,
schedule, data loader and latent cache."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from core.config.schema import Attention, DEMO_MODEL, LatentCache as CacheMode, MixedPrecision, TrainConfig
from core.system.paths import user_cache_dir
from core.training import placement
from core.training.checkpointing import enable_unet_checkpointing
from core.training.optim import ParamGroup, build_optimizer, build_scheduler, group_lrs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.models.components import ModelComponents
    from core.models.family import Family
    from core.models.lora import LoraHandles

log = logging.getLogger("lorakiln.run")

WEIGHT_DTYPES = {MixedPrecision.NO: torch.float32, MixedPrecision.FP16: torch.float16,
                 MixedPrecision.BF16: torch.bfloat16}


def weight_dtype(precision: MixedPrecision, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights. On a GPU half precision halves their VRAM; on a CPU
    they stay fp32 (autocast still computes in bf16), because CPU kernels such as layer
    norm refuse half-precision parameters with fp32 inputs and memory is not the limit."""
    return WEIGHT_DTYPES[precision] if device.type == "cuda" else torch.float32


def choose_precision(config: TrainConfig, has_cuda: bool) -> tuple[MixedPrecision, str | None]:
    """The precision to train in, and a note when the configured one cannot run here."""
    wanted = config.training.mixed_precision
    if wanted is MixedPrecision.FP16 and not has_cuda:
        return MixedPrecision.NO, "fp16 mixed precision needs a CUDA GPU; training in fp32 on the CPU"
    if wanted is MixedPrecision.BF16 and has_cuda and not has_native_bf16():
        major, minor = torch.cuda.get_device_capability()
        return MixedPrecision.FP16, (f"this GPU (compute capability {major}.{minor}) has no native bf16, which "
                                     "needs 8.0 or newer (RTX 30xx, A100 and later); training in fp16 with a "
                                     "loss scaler instead")
    return wanted, None


def has_native_bf16() -> bool:
    """Whether the current GPU computes bf16 in hardware. torch.cuda.is_bf16_supported()
    also says yes for older cards that emulate it, many times slower than fp16."""
    return tuple(torch.cuda.get_device_capability()) >= (8, 0)


def leaves_lora_unused(config: TrainConfig) -> bool:
    """True when some trained LoRA weights get no gradient in a step: with CLIP skip N the
    text encoder's last N-1 layers still run, but their output never reaches the loss.
    DDP must then look for unused parameters, or it waits forever for their gradients."""
    return config.network.train_text_encoder and config.model.clip_skip > 1


def make_accelerator(precision: MixedPrecision, find_unused_parameters: bool = False):  # noqa: ANN201 - Accelerator
    """Gradient accumulation is not handed to accelerate: the engine closes the windows itself
    (see step.train_micro_batch), so accelerate sees one micro-batch per optimizer step."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
    return Accelerator(mixed_precision=precision.value, cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])


def reset_accelerate_state(distributed: bool) -> None:
    """accelerate keeps process-wide state; a second run in the same process (queue, GUI)
    with another precision must start clean. A distributed launch keeps its process group."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()


@dataclass
class Network:
    family: Family
    components: ModelComponents
    handles: LoraHandles
    trained: dict[str, torch.nn.Module]  # component name -> module with trainable LoRA


def run_family(config: TrainConfig) -> Family:
    """The family a run trains (raises core.models.family.UnsupportedFamily)."""
    from core.models.family import family_for

    return family_for(config.model.base_model, config.model.family)


def load_network(config: TrainConfig, device: torch.device, weight_dtype: torch.dtype,
                 cancelled: Callable[[], bool], status: Callable[[str], None],
                 unet_device: torch.device | None = None, encoders_wait: bool = False) -> Network:
    from core.models.base_model import load_base_model

    family = run_family(config)
    components = load_base_model(config.model.base_model, family=config.model.family, vae=config.model.vae,
                                 v_parameterization=config.model.v_parameterization,
                                 cancelled=cancelled, status=status)
    status("attaching LoRA…")
    return prepare_network(config, family, components, device, weight_dtype,
                           placement.vae_dtype(config, family, weight_dtype, device), unet_device, encoders_wait)


def prepare_network(config: TrainConfig, family: Family, components: ModelComponents, device: torch.device,
                    weight_dtype: torch.dtype, vae_dtype: torch.dtype,
                    unet_device: torch.device | None = None, encoders_wait: bool = False) -> Network:
    """LoRA attached to loaded ``components`` (and its init_weights read), the attention kernel
    and checkpointing set, and every module moved to ``device`` in its training dtype -- the
    U-Net to ``unet_device`` when given: the engine keeps it on the CPU while latents and
    captions are cached, so the VAE and text encoders never share the GPU with it (see
    place_unet); with ``encoders_wait``, the text encoders that train no LoRA stay on the CPU
    too, until their captions are encoded (the engine's _cache_text_states), so the VAE
    caches latents alone on the card. The VRAM forecast (core.training.vram_forecast) calls it with weightless
    modules on the meta device."""
    from core.kohya.lora_format import describe_lora, ensure_family, load_kohya_into, read_kohya_file
    from core.models.lora import attach_lora

    handles = attach_lora(components, family, config.network)
    if config.network.init_weights:
        state, metadata = read_kohya_file(config.network.init_weights)
        ensure_family(describe_lora(state, metadata), family,
                      f"network.init_weights ({Path(config.network.init_weights).name})")
        load_kohya_into(handles, family, state)
    if config.training.attention is Attention.EAGER:
        from diffusers.models.attention_processor import AttnProcessor

        components.unet.set_attn_processor(AttnProcessor())
    if config.training.gradient_checkpointing:
        enable_unet_checkpointing(components.unet)
        if config.network.train_text_encoder:
            for text_encoder in components.text_encoders.values():
                # transformers 5 renamed it; the old name still works but warns.
                enable = getattr(text_encoder, "activation_checkpointing_enable", None) or \
                    text_encoder.gradient_checkpointing_enable
                enable()
    # Frozen weights in the training precision, LoRA weights in fp32 (autocast mixes them);
    # the VAE in placement.vae_dtype (half on a GPU, as sd-scripts; fp32 by no_half_vae).
    denoisers = components.denoisers()
    for name, module in denoisers.items():
        home = component_home(name, name in handles.targets, device, unet_device, encoders_wait)
        for param in module.parameters():
            param.data = param.data.to(home, torch.float32 if param.requires_grad else weight_dtype)
        for buffer_name, buffer in list(module.named_buffers()):
            if buffer.is_floating_point():
                buffer.data = buffer.data.to(home, weight_dtype)
            else:
                buffer.data = buffer.data.to(home)
    if config.model.fp8_base or config.model.fp8_base_unet:
        from core.models.fp8 import store_components_in_fp8

        log.info(store_components_in_fp8(config.model, denoisers, weight_dtype))
    components.vae.to(device, vae_dtype)
    components.vae.requires_grad_(False)
    components.vae.eval()
    trained = {name: denoisers[name] for name in handles.targets}
    for name, module in denoisers.items():
        module.train(name in trained)
    return Network(family, components, handles, trained)


def component_home(name: str, trains: bool, device: torch.device, unet_device: torch.device | None,
                   encoders_wait: bool) -> torch.device:
    """Where prepare_network puts a denoiser: the U-Net on ``unet_device`` when given, a text
    encoder that trains no LoRA on the CPU while it waits (``encoders_wait``), else ``device``."""
    if name == "unet":
        return device if unet_device is None else unet_device
    return placement.CPU if encoders_wait and not trains else device


def place_unet(network: Network, device: torch.device, optimizer: torch.optim.Optimizer) -> None:
    """The U-Net (with its LoRA) onto ``device`` once caching is done. Its parameters stay the
    same objects, so the optimizer keeps them; optimizer state loaded while they were on the
    CPU (a resume) is loaded again, which puts it where each optimizer keeps it."""
    unet = network.components.unet
    if placement.module_device(unet) == device:
        return
    unet.to(device)
    if optimizer.state_dict()["state"]:
        optimizer.load_state_dict(optimizer.state_dict())


def param_groups(config: TrainConfig, network: Network) -> list[ParamGroup]:
    """The U-Net's LoRA with unet_lr; each text encoder's with its rate (text_encoder_lr, and
    for a second encoder text_encoder_2_lr when set), one group per encoder, named as it is."""
    from core.config.schema import text_encoder_lrs

    unet_lr, _ = group_lrs(config.optimizer)
    groups = []
    if "unet" in network.handles.targets:
        groups += unet_param_groups(config, network, unet_lr)
    rates = text_encoder_lrs(config.optimizer, network.family.text_encoder_names)
    for name, rate in rates.items():
        if name in network.handles.targets:
            groups.append(ParamGroup(name, network.handles.params((name,)), rate))
    return groups


def unet_param_groups(config: TrainConfig, network: Network, unet_lr: float) -> list[ParamGroup]:
    """One U-Net group, or with down/mid/up_lr_weight one group a block, named unet_block<N>
    with unet_lr times the block's weight (sd-scripts' groups and log tags)."""
    from core.models.blocks import block_lr_weights

    weights = block_lr_weights(config.network, network.family.unet_blocks)
    if weights is None:
        return [ParamGroup("unet", network.handles.params(("unet",)), unet_lr)]
    return [ParamGroup(f"unet_block{index}", params, unet_lr * (weights[index] if index >= 0 else 1.0), unet_lr)
            for index, params in network.handles.block_params(network.family).items()]


def make_optimizer_and_schedule(config: TrainConfig, network: Network, total_steps: int):  # noqa: ANN201
    optimizer = build_optimizer(param_groups(config, network), config.optimizer)
    return optimizer, build_scheduler(optimizer, config.schedule, total_steps)


def vae_identity(config: TrainConfig) -> str:
    """What the cached latents depend on besides the image: which VAE encoded them."""
    parts = []
    for value in (config.model.base_model, config.model.vae):
        if value and value != DEMO_MODEL and os.path.exists(value):
            stat = os.stat(value)
            parts.append(f"{os.path.abspath(value)}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            parts.append(value)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def text_cache_identity(config: TrainConfig, family_name: str, precision: str) -> str:
    """What cached text-encoder outputs depend on besides the caption: the model (as
    vae_identity names files), its family, clip skip, token length and the precision they
    were computed in."""
    model = vae_identity(replace(config, model=replace(config.model, vae="")))
    parts = [model, family_name, str(config.model.clip_skip), str(config.training.max_token_length), precision]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def make_text_cache(config: TrainConfig, family_name: str, precision: str):  # noqa: ANN201 - TextStateCache
    from core.config.schema import TextEncoderCache
    from core.training.text_cache import TextStateCache

    if config.dataset.text_encoder_cache is TextEncoderCache.DISK:
        return TextStateCache(user_cache_dir() / "text", text_cache_identity(config, family_name, precision))
    return TextStateCache()


def make_latent_cache(config: TrainConfig):  # noqa: ANN201 - LatentCache | None
    from core.data.latent_cache import LatentCache

    mode = config.dataset.latent_cache
    if mode is CacheMode.OFF:
        return None
    folder = user_cache_dir() / "latents" if mode is CacheMode.DISK else None
    return LatentCache(mode.value, folder, vae_identity(config))


def vae_encoder(components, device: torch.device, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:  # noqa: ANN001
    generator = torch.Generator(device="cpu").manual_seed(seed)

    vae = components.vae

    def sample(pixels: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        distribution = vae.encode(pixels.to(device, placement.module_dtype(vae))).latent_dist
        mean, std = distribution.mean.float(), distribution.std.float()
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator).to(device)
        return mean + std * noise, noise  # a sample, as sd-scripts caches

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        latents, noise = sample(pixels, None)
        half = placement.module_dtype(vae)
        if half != torch.float32 and not bool(torch.isfinite(latents).all()):
            # This VAE overflows in half precision on these images: encode them again in fp32
            # (with the same noise) rather than cache NaN; model.no_half_vae avoids the retry.
            log.warning("the VAE made NaN or inf latents in %s; encoding that batch again in fp32 "
                        "(set model.no_half_vae to keep the VAE in fp32 throughout)", half)
            vae.to(torch.float32)
            try:
                latents, _ = sample(pixels, noise)
            finally:
                vae.to(half)
        return (latents * components.vae_scale_factor).float().cpu()

    return encode


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This process's batches: every world-th, the list padded by wrapping so every process
    runs the same number of steps (as a distributed sampler does)."""
    if world <= 1 or not indices:
        return indices
    padded = indices + indices[: (-len(indices)) % world]
    return padded[rank::world]
