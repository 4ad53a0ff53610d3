"""The built-in SDXL demo model: the SDXL architecture at toy size, with random weights.

SDXL's shape with every width tiny: two text encoders of different widths (CLIP-L-like 32,
bigG-like 64 with a 32-wide projection), a U-Net whose context is both encoders' states
concatenated (96) and whose "text_time" addition embedding takes the pooled text and the six
size/crop time ids, layers_per_block 2 and transformer depths 1/2 as SDXL's first levels,
but two levels instead of three. Module names, LoRA targets, Kohya names and every code path
are the real ones; a training step at 64-128 px takes about as long as the SD 1.x demo's.

The weights are a pure function of the seed: they are drawn inside a forked RNG, so the
caller's global torch RNG is left exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.models.demo import DEMO_TEXT_ENCODER_CONFIG, DEMO_VAE_CONFIG, seeded

TEXT_WIDTHS = (32, 64)  # encoder 1, encoder 2: different, so a single file tells them apart
POOLED_WIDTH = 32
TIME_EMBED_DIM = 8  # per time id (SDXL: 256)

DEMO_SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [2, 2],
    "cross_attention_dim": sum(TEXT_WIDTHS),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": POOLED_WIDTH + 6 * TIME_EMBED_DIM,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "center_input_sample": False,
}

DEMO_SDXL_VAE_CONFIG: dict[str, Any] = {**DEMO_VAE_CONFIG, "scaling_factor": 0.13025, "force_upcast": True}

DEMO_SDXL_TEXT_ENCODER_CONFIG: dict[str, Any] = {**DEMO_TEXT_ENCODER_CONFIG, "hidden_size": TEXT_WIDTHS[0]}
DEMO_SDXL_TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **DEMO_TEXT_ENCODER_CONFIG, "hidden_size": TEXT_WIDTHS[1], "intermediate_size": 128,
    "projection_dim": POOLED_WIDTH, "hidden_act": "gelu", "pad_token_id": 0}


def build_demo_sdxl_modules(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """(U-Net, VAE, text encoder, text encoder 2); the same seed always gives bit-identical
    weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with seeded(seed):  # as core.models.demo: the caller's random stream is left as it was
        unet = UNet2DConditionModel(**DEMO_SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**DEMO_SDXL_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**DEMO_SDXL_TEXT_ENCODER_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**DEMO_SDXL_TEXT_ENCODER_2_CONFIG))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return unet, vae, text_encoder, text_encoder_2


def write_demo_sdxl_config_dir(folder: str | Path) -> Path:
    """A weightless config folder of the demo's shapes, in the layout of resources/sdxl, for
    loading an original-layout file of demo-sized weights (``config_dir``)."""
    import shutil

    from transformers import CLIPTextConfig

    from core.models.sdxl_files import sdxl_config_dir

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for name, class_name, config in (("unet", "UNet2DConditionModel", DEMO_SDXL_UNET_CONFIG),
                                     ("vae", "AutoencoderKL", DEMO_SDXL_VAE_CONFIG)):
        (root / name).mkdir(exist_ok=True)
        (root / name / "config.json").write_text(json.dumps({**config, "_class_name": class_name}, indent=2),
                                                 encoding="utf-8")
    for name, architecture, config in (
            ("text_encoder", "CLIPTextModel", DEMO_SDXL_TEXT_ENCODER_CONFIG),
            ("text_encoder_2", "CLIPTextModelWithProjection", DEMO_SDXL_TEXT_ENCODER_2_CONFIG)):
        text_config = CLIPTextConfig(**config)
        text_config.architectures = [architecture]
        text_config.save_pretrained(str(root / name))
    for name in ("scheduler", "tokenizer", "tokenizer_2"):
        shutil.copytree(sdxl_config_dir() / name, root / name, dirs_exist_ok=True)
    shutil.copyfile(sdxl_config_dir() / "model_index.json", root / "model_index.json")
    return root
