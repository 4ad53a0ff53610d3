"""Tiny Stable-Diffusion-1.x-shaped models for tests, and the full SD 1.5 shapes on meta.

The tiny models have every block type of SD 1.5 (three cross-attention down blocks and a
plain one, mirrored up blocks, a cross-attention mid block, a CLIP text encoder) at a
size that runs a forward pass in milliseconds on a CPU. They do not depend on
core/models/base_model.py so the LoRA tests keep working whatever that module becomes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from core.models.demo import DEMO_TEXT_ENCODER_CONFIG, DEMO_UNET_CONFIG, DEMO_VAE_CONFIG
from core.models.sd15_files import sd15_config_dir

TINY_CONTEXT_DIM = 32


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=TINY_CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(hidden_size=TINY_CONTEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, vocab_size=49408, max_position_embeddings=77,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(32, 32), latent_channels=4,
                         norm_num_groups=32, sample_size=16).eval()


def _load_config(component: str) -> dict[str, Any]:
    return json.loads((Path(sd15_config_dir()) / component / "config.json").read_text("utf-8"))


def sd15_unet_on_meta() -> UNet2DConditionModel:
    """The full SD 1.5 U-Net with no storage behind its weights (architecture only)."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(_load_config("unet"))


def sd15_text_encoder_on_meta() -> CLIPTextModel:
    config = CLIPTextConfig(**{k: v for k, v in _load_config("text_encoder").items()
                               if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        return CLIPTextModel(config)


def sd1_attach(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, network: Any) -> Any:
    """core.models.lora.attach_lora as the SD 1.x family does it, for bare modules."""
    from core.models.components import ModelComponents
    from core.models.lora import attach_lora
    from core.models.sd1 import FAMILY

    components = ModelComponents(family=FAMILY.name, unet=unet, vae=None, text_encoders={"text_encoder": text_encoder},
                                 tokenizers={}, noise_scheduler=None, vae_scale_factor=0.18215, source="test",
                                 is_demo=True)
    return attach_lora(components, FAMILY, network)


def write_demo_config_dir(folder: str | Path) -> Path:
    """Write a weightless config folder of the demo's shapes (the layout of resources/sd15).

    ``from_single_file`` builds modules from the config it is given, so an original-layout
    file of demo-sized weights needs this folder as ``config_dir`` instead of the SD 1.5 one.
    """
    import shutil

    from core.models.sd15_files import tokenizer_dir

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    # Only config.json files: no module is built, so this is quick and draws no random numbers.
    _write_model_config(root / "unet", "UNet2DConditionModel", DEMO_UNET_CONFIG)
    _write_model_config(root / "vae", "AutoencoderKL", DEMO_VAE_CONFIG)
    text_config = CLIPTextConfig(**DEMO_TEXT_ENCODER_CONFIG)
    text_config.architectures = ["CLIPTextModel"]
    text_config.save_pretrained(str(root / "text_encoder"))
    shutil.copytree(sd15_config_dir() / "scheduler", root / "scheduler", dirs_exist_ok=True)
    shutil.copytree(tokenizer_dir(), root / "tokenizer", dirs_exist_ok=True)
    shutil.copyfile(sd15_config_dir() / "model_index.json", root / "model_index.json")
    return root


def _write_model_config(folder: Path, class_name: str, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    full = dict(config)
    full["_class_name"] = class_name  # what diffusers' save_config writes, minus its version
    (folder / "config.json").write_text(json.dumps(full, indent=2), encoding="utf-8")
