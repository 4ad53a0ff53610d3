"""SDXL U-Net module paths in diffusers' names -> the original (SAI / LDM) names.

sd-scripts builds its SDXL U-Net with the module names of Stability AI's original code
(library/sdxl_original_unet.py), so Kohya SDXL LoRA files, ComfyUI, AUTOMATIC1111/Forge
and single-file checkpoints all name U-Net modules that way; diffusers names them by block.
The blocks line up as in sd-scripts' sdxl_model_util conversion (layers_per_block 2):

  conv_in                       input_blocks.0.0
  down_blocks.B.resnets.I       input_blocks.(1 + 3B + I).0     (in_layers / emb_layers / out_layers)
  down_blocks.B.attentions.I    input_blocks.(1 + 3B + I).1
  down_blocks.B.downsamplers.0  input_blocks.(3 + 3B).0.op
  mid_block.resnets.I           middle_block.(2I)
  mid_block.attentions.0        middle_block.1
  up_blocks.B.resnets.I         output_blocks.(3B + I).0
  up_blocks.B.attentions.I      output_blocks.(3B + I).1
  up_blocks.B.upsamplers.0      output_blocks.(3B + 2).2.conv   (after the attention: every
                                                                 SDXL up block that upsamples has one)
  time_embedding.linear_1/2     time_embed.0 / time_embed.2
  add_embedding.linear_1/2      label_emb.0.0 / label_emb.0.2
  conv_norm_out / conv_out      out.0 / out.2

Inside a transformer block the names agree (proj_in, transformer_blocks.K.attn1.to_q,
ff.net.0.proj, ...), so only the block prefix changes.
"""

from __future__ import annotations

LAYERS_PER_BLOCK = 2

RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_LEVEL = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


class UnknownModulePath(KeyError):
    """A diffusers path with no place in the SDXL U-Net's original layout."""


def sai_unet_path(path: str, layers_per_block: int = LAYERS_PER_BLOCK) -> str:
    """The original name of a diffusers U-Net module or parameter path (dots kept):
    ``down_blocks.1.attentions.0.proj_in`` -> ``input_blocks.4.1.proj_in``."""
    for name, original in TOP_LEVEL.items():
        if path == name or path.startswith(name + "."):
            return original + path[len(name):]
    parts = path.split(".")
    per = layers_per_block + 1  # resnets of a level, plus its down/upsampler slot
    try:
        if parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), parts[3:]
            if kind == "attentions":
                return _join("middle_block.1", rest)
            if kind == "resnets":
                return _join(f"middle_block.{2 * index}", _resnet(rest))
        elif parts[0] in ("down_blocks", "up_blocks"):
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            down = parts[0] == "down_blocks"
            if kind == "downsamplers" and down:  # downsamplers.0.conv -> op
                return _join(f"input_blocks.{per * (block + 1)}.0.op", rest[1:])
            if kind == "upsamplers" and not down:
                return _join(f"output_blocks.{per * block + layers_per_block}.2", rest)
            slot = 1 + per * block + index if down else per * block + index
            side = "input_blocks" if down else "output_blocks"
            if kind == "resnets":
                return _join(f"{side}.{slot}.0", _resnet(rest))
            if kind == "attentions":
                return _join(f"{side}.{slot}.1", rest)
    except (IndexError, ValueError):
        pass
    raise UnknownModulePath(f"no original SDXL name for U-Net module {path!r}")


def _resnet(rest: list[str]) -> list[str]:
    if not rest:
        return rest
    if rest[0] not in RESNET_NAMES:
        raise UnknownModulePath(f"no original SDXL name for ResNet part {rest[0]!r}")
    return RESNET_NAMES[rest[0]].split(".") + rest[1:]


def _join(prefix: str, rest: list[str]) -> str:
    return ".".join([prefix, *rest]) if rest else prefix
