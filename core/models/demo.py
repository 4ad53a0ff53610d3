"""The built-in demo model: the SD 1.x architecture at toy size, with random weights.

It has the same block types and module names as SD 1.5 (so LoRA targets, Kohya key names
and every code path are the real ones) but trains a step in milliseconds on a CPU. Its
pictures are noise: it exists to show what training does, and for tests, not to draw.

The weights are a pure function of the seed: they are drawn inside a forked RNG, so the
caller's global torch RNG is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from core.models.sd15_files import BOS_TOKEN_ID, CLIP_MAX_LENGTH, EOS_TOKEN_ID, load_tokenizer

# Same block types as resources/sd15/unet/config.json, at 32/32/64/64 channels; groups of 32
# divide every width. diffusers' "attention_head_dim" is the head count for SD 1.x: 2 heads
# (head size 16-32) make a training step at 256 px three times faster than SD 1.5's 8 heads
# would (size 4-8: CPU attention is then mostly overhead), and change no parameter or name.
DEMO_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "center_input_sample": False,
}

# Four blocks, as in SD 1.x, so that latents are image / 8 with 4 channels.
DEMO_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 256,
    "scaling_factor": 0.18215,
}

# The real vocabulary and 77 positions (the shipped tokenizer's ids must all be valid),
# special ids as in resources/sd15/text_encoder/config.json; everything else tiny.
DEMO_TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 64,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": CLIP_MAX_LENGTH,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": EOS_TOKEN_ID,
}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """The global CPU generator seeded for building a demo model, and put back on exit, so that
    building one never shifts the random stream of whoever called us (modules are built on the
    CPU: no device generator is drawn from, hence devices=[]). Weightless modules (built under
    ``torch.device("meta")``, as the VRAM forecast does) draw nothing, so the generator is left
    alone: the forecast runs in a background thread of the app, and seeding or restoring the
    process-wide generator there would change the random numbers of a run training meanwhile."""
    import torch

    if torch.get_default_device().type == "meta":
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_demo_modules(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """The demo's (U-Net, VAE, text encoder, tokenizer); the same seed always gives
    bit-identical weights. core.models.sd1 makes them a family's components."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with seeded(seed):
        unet = UNet2DConditionModel(**DEMO_UNET_CONFIG)
        vae = AutoencoderKL(**DEMO_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**DEMO_TEXT_ENCODER_CONFIG))
    for module in (unet, vae, text_encoder):
        module.eval()  # as from_pretrained hands models back; training code switches modes
    return unet, vae, text_encoder, load_tokenizer()
