"""Test helper: write an original-layout (CompVis/LDM) single-file SD 1.x checkpoint.

Users download checkpoints in the layout of the original Stable Diffusion repository, and
diffusers ships no converter *to* it, so tests build one here from diffusers/transformers
modules: the inverse of diffusers' single-file key mapping. Like real files, the result
carries more than the three models: the DDPM schedule buffers, the CLIP position_ids and
(optionally) a full set of EMA weights under ``model_ema.`` with flattened names. The EMA
copies are deliberately different from the live weights, so a loader that picked them up
instead of ``model.diffusion_model.*`` would be caught.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                 "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                 "conv_shortcut": "skip_connection"}
_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                        "to_out.0": "proj_out"}


def unet_to_ldm(unet: Any) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel weights under their original names (prefix included)."""
    per_block = int(unet.config.layers_per_block)
    has_attention = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + _unet_key(key, per_block, has_attention)] = value.detach().clone()
    return out


def _unet_key(key: str, per_block: int, up_has_attention: list[bool]) -> str:
    parts = key.split(".")
    head, rest = parts[0], ".".join(parts[1:])
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for diffusers_name, ldm_name in fixed.items():
        if key.startswith(diffusers_name + "."):
            return ldm_name + key[len(diffusers_name):]
    if head == "down_blocks":
        block, kind, index, tail = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":  # "downsamplers.0.conv.weight" -> "op.weight"
            return f"input_blocks.{(block + 1) * (per_block + 1)}.0.op.{parts[-1]}"
        slot = 1 + block * (per_block + 1) + index
        return f"input_blocks.{slot}.0.{_resnet(tail)}" if kind == "resnets" \
            else f"input_blocks.{slot}.1.{tail}"
    if head == "mid_block":
        kind, index, tail = parts[1], int(parts[2]), ".".join(parts[3:])
        return f"middle_block.{2 * index}.{_resnet(tail)}" if kind == "resnets" \
            else f"middle_block.1.{tail}"
    if head == "up_blocks":
        block, kind, index, tail = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":  # after the resnet (and the attention, where there is one)
            slot = block * (per_block + 1) + per_block
            return f"output_blocks.{slot}.{2 if up_has_attention[block] else 1}.conv.{parts[-1]}"
        slot = block * (per_block + 1) + index
        return f"output_blocks.{slot}.0.{_resnet(tail)}" if kind == "resnets" \
            else f"output_blocks.{slot}.1.{tail}"
    raise KeyError(f"no original-layout name for U-Net key {key!r} ({rest})")


def _resnet(tail: str) -> str:
    name, _, leaf = tail.partition(".")
    return f"{_RESNET_NAMES[name]}.{leaf}"


def vae_to_ldm(vae: Any, prefix: str = VAE_PREFIX) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights under their original names.

    ``prefix`` is "first_stage_model." inside a full checkpoint, "" for a standalone VAE file.
    """
    num_up = len(vae.config.up_block_types)
    out: dict[str, torch.Tensor] = {}
    for key, value in vae.state_dict().items():
        name, value = _vae_key(key, num_up, value.detach().clone())
        out[prefix + name] = value
    return out


def _vae_key(key: str, num_up: int, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    parts = key.split(".")
    side = parts[0]
    if side in ("quant_conv", "post_quant_conv"):
        return key, value
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{parts[-1]}", value
    if parts[1] in ("conv_in", "conv_out"):
        return key, value
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            tail = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{side}.mid.block_{int(parts[3]) + 1}.{tail}", value
        inner = ".".join(parts[4:-1])
        # The original attention projections are 1x1 convolutions, not linear layers.
        if parts[-1] == "weight" and inner != "group_norm" and value.ndim == 2:
            value = value[:, :, None, None]
        return f"{side}.mid.attn_1.{_VAE_ATTENTION_NAMES[inner]}.{parts[-1]}", value
    if parts[1] == "down_blocks":
        block = int(parts[2])
        if parts[3] == "downsamplers":
            return f"encoder.down.{block}.downsample.conv.{parts[-1]}", value
        tail = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
        return f"encoder.down.{block}.block.{parts[4]}.{tail}", value
    if parts[1] == "up_blocks":
        block = num_up - 1 - int(parts[2])  # the original decoder counts its levels upwards
        if parts[3] == "upsamplers":
            return f"decoder.up.{block}.upsample.conv.{parts[-1]}", value
        tail = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
        return f"decoder.up.{block}.block.{parts[4]}.{tail}", value
    raise KeyError(f"no original-layout name for VAE key {key!r}")


def text_encoder_to_ldm(text_encoder: Any) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights under cond_stage_model.transformer.text_model.*.

    transformers 5 flattened CLIPTextModel (no ``text_model.`` level in its own keys);
    original files have the level, so it is put back. position_ids is a buffer the model
    no longer saves, but real files carry it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        out[CLIP_PREFIX + key] = value.detach().clone()
    positions = int(text_encoder.config.max_position_embeddings)
    out[CLIP_PREFIX + "embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def schedule_extras() -> dict[str, torch.Tensor]:
    """The DDPM buffers the LatentDiffusion module saved with every original checkpoint."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return {"betas": betas.float(), "alphas_cumprod": alphas_cumprod.float(),
            "alphas_cumprod_prev": previous.float(), "logvar": torch.zeros(1000)}


def ema_extras(unet_ldm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EMA copies as LDM saved them: 'model_ema.' + the key without 'model.' and its dots."""
    out: dict[str, torch.Tensor] = {"model_ema.decay": torch.tensor(0.9999),
                                    "model_ema.num_updates": torch.tensor(1234, dtype=torch.int32)}
    for key, value in unet_ldm.items():
        flat = "".join(key.split(".")[1:])
        out["model_ema." + flat] = value + 0.125 if value.is_floating_point() else value.clone()
    return out


def ldm_state_dict(unet: Any, vae: Any, text_encoder: Any, *, extras: bool = True,
                   ema: bool = False, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    unet_ldm = unet_to_ldm(unet)
    state = {**unet_ldm, **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    if extras:
        state.update(schedule_extras())
    if ema:
        state.update(ema_extras(unet_ldm))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def write_state_dict(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """.safetensors as is; .ckpt/.pt the way Lightning saved them, under "state_dict"."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"format": "pt"})
    else:
        torch.save({"epoch": 6, "global_step": 470000, "state_dict": state}, path)
    return path


def write_ldm_checkpoint(path: str | Path, unet: Any, vae: Any, text_encoder: Any, *,
                         extras: bool = True, ema: bool = False,
                         dtype: torch.dtype | None = None) -> Path:
    """Write the three models as one original-layout checkpoint (.safetensors or .ckpt)."""
    state = ldm_state_dict(unet, vae, text_encoder, extras=extras, ema=ema, dtype=dtype)
    return write_state_dict(path, state)


def write_ldm_vae(path: str | Path, vae: Any) -> Path:
    """A standalone VAE file in the original layout (no prefix), like vae-ft-mse-840000."""
    return write_state_dict(path, vae_to_ldm(vae, prefix=""))


_SAFETENSORS_DTYPES = {torch.float32: ("F32", 4), torch.float16: ("F16", 2),
                       torch.bfloat16: ("BF16", 2), torch.int64: ("I64", 8),
                       torch.int32: ("I32", 4)}


def write_zero_safetensors(path: str | Path, state: dict[str, torch.Tensor],
                           float_dtype: torch.dtype = torch.float16) -> Path:
    """A .safetensors of ``state``'s names and shapes whose data are all zeros.

    Only the header is written; the data area is left as a hole in a sparse file. So a
    checkpoint of full SD 1.5 size (2 GB in fp16) costs no disk space or write time, and
    ``state`` may hold meta tensors (modules built without memory).
    """
    import json
    import struct

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, value in state.items():
        dtype = float_dtype if value.is_floating_point() else value.dtype
        code, size = _SAFETENSORS_DTYPES[dtype]
        length = value.numel() * size
        header[name] = {"dtype": code, "shape": list(value.shape),
                        "data_offsets": [offset, offset + length]}
        offset += length
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    path = Path(path)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path
