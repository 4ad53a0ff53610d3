"""Test helper: write an SDXL single-file checkpoint in the original (SAI / LDM) layout.

The inverse of diffusers' SDXL single-file conversion, for tests only: the U-Net under
``model.diffusion_model.`` with its original module names, CLIP-L under
``conditioner.embedders.0.transformer.text_model.`` (HF layout), OpenCLIP bigG under
``conditioner.embedders.1.model.`` in OpenCLIP's own layout (resblocks, one fused in_proj per
attention, text_projection as a (width, projection) matrix), and the VAE under
``first_stage_model.``, as sd_xl_base_1.0.safetensors has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.models.sdxl_names import sai_unet_path
from tests.ldm_checkpoint import UNET_PREFIX, schedule_extras, vae_to_ldm, write_state_dict

CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def unet_to_sai(unet: Any) -> dict[str, torch.Tensor]:
    return {UNET_PREFIX + sai_unet_path(key): value.detach().clone() for key, value in unet.state_dict().items()}


def clip_l_to_sai(text_encoder: Any) -> dict[str, torch.Tensor]:
    out = {CLIP_L_PREFIX + key.removeprefix("text_model."): value.detach().clone()
           for key, value in text_encoder.state_dict().items()}
    positions = int(text_encoder.config.max_position_embeddings)
    out[CLIP_L_PREFIX + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def open_clip_to_sai(text_encoder_2: Any) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection -> OpenCLIP's text tower names."""
    state = {key.removeprefix("text_model."): value.detach().clone()
             for key, value in text_encoder_2.state_dict().items()}
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"),
           "ln_final.bias": state.pop("final_layer_norm.bias"),
           "text_projection": state.pop("text_projection.weight").T.contiguous(),
           "logit_scale": torch.tensor(4.6052)}
    layers = int(text_encoder_2.config.num_hidden_layers)
    for i in range(layers):
        source = f"encoder.layers.{i}."
        target = f"transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[target + f"attn.in_proj_{leaf}"] = torch.cat(
                [state.pop(source + f"self_attn.{p}_proj.{leaf}") for p in "qkv"])
            for name, original in _OPEN_CLIP_LAYER.items():
                out[target + f"{original}.{leaf}"] = state.pop(source + f"{name}.{leaf}")
    state.pop("embeddings.position_ids", None)
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)[:3]}")
    return {OPEN_CLIP_PREFIX + key: value for key, value in out.items()}


def sdxl_state_dict(unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, *,
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {**unet_to_sai(unet), **vae_to_ldm(vae), **clip_l_to_sai(text_encoder),
             **open_clip_to_sai(text_encoder_2), **schedule_extras()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def write_sdxl_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder: Any, text_encoder_2: Any, *,
                          dtype: torch.dtype | None = None) -> Path:
    return write_state_dict(path, sdxl_state_dict(unet, vae, text_encoder, text_encoder_2, dtype=dtype))


def full_size_sdxl_on_meta() -> dict[str, torch.nn.Module]:
    """Full-size SDXL's U-Net and both text encoders from the shipped configs, on the meta
    device (shapes, no weights): for checks of the complete key set."""
    import json

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models.sdxl_files import sdxl_config_dir

    root = sdxl_config_dir()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((root / "unet" / "config.json").read_text("utf-8")))
        te1 = CLIPTextModel(CLIPTextConfig.from_json_file(root / "text_encoder" / "config.json"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_json_file(root / "text_encoder_2" / "config.json"))
    return {"unet": unet, "text_encoder": te1, "text_encoder_2": te2}
