"""U-Net blocks as sd-scripts' networks/lora.py counts them: per-block learning-rate weights
(down/mid/up_lr_weight) and per-block ranks (block_dims, block_alphas, conv_block_dims,
conv_block_alphas).

A module's block comes from its Kohya name, so a file, the optimizer groups and the
validation all agree with sd-scripts:

- SD 1.x (25 blocks): ``down_blocks_I_{resnets|attentions}_J`` is block 1 + 3I + J and its
  downsampler 1 + 3I + 2 (block 0 holds nothing); the mid block is 12; ``up_blocks_I_..._J``
  is 13 + 3I + J, its upsampler 13 + 3I + 2. down/up_lr_weight have 12 values each (the
  first down value belongs to the empty block 0), mid_lr_weight one.
- SDXL (23 blocks), in the original module names the file uses: ``input_blocks_N`` is block
  1 + N, ``middle_block_N`` 10 + N, ``output_blocks_N`` 13 + N; blocks 0 (time and label
  embeddings) and 22 (out) get no LoRA and weight 1. down/up_lr_weight have 9 values each,
  mid_lr_weight three.

Lists may be given as comma-separated numbers or, for down/up_lr_weight, as a preset
(``cosine``, ``sine``, ``linear``, ``reverse_linear``, ``zeros``, optionally ``+base``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover - typing only
    from core.config.schema import NetworkParams

PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
LR_WEIGHT_FIELDS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
DIM_FIELDS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
_SD1_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
_SDXL_BLOCK = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")


class BlockSettingError(ValueError):
    """A block setting that cannot be read: ``field`` is the NetworkParams field, the message
    names it and says what it needs."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"network.{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class UnetBlocks:
    """How a family's U-Net is cut into blocks: ``down_up`` values for each of down/up_lr_weight,
    ``mid`` for mid_lr_weight, and one more block at each end (SDXL's embeddings and out)."""

    down_up: int
    mid: int
    ends: bool

    @property
    def total(self) -> int:
        """The number of values block_dims and the other per-block lists take."""
        return 2 * self.down_up + self.mid + (2 if self.ends else 0)

    def index(self, kohya_name: str) -> int:
        """The block of a U-Net module's Kohya name; -1 for a module outside every block."""
        if self.ends:
            match = _SDXL_BLOCK.match(kohya_name)
            if match is None:
                return -1
            first = {"input_blocks": 1, "middle_block": 1 + self.down_up,
                     "output_blocks": 1 + self.down_up + self.mid}[match.group(1)]
            return first + int(match.group(2))
        match = _SD1_UPDOWN.search(kohya_name)
        if match is None:
            return self.down_up if "mid_block_" in kohya_name else -1
        side, level, kind, slot = match.groups()
        inside = 3 * int(level) + (2 if kind in ("upsamplers", "downsamplers") else int(slot))
        return 1 + inside if side == "down" else self.down_up + self.mid + inside


SD1_BLOCKS = UnetBlocks(down_up=12, mid=1, ends=False)
SDXL_BLOCKS = UnetBlocks(down_up=9, mid=3, ends=True)


def _numbers(text: str, field: str) -> list[float]:
    # sd-scripts reads an empty item of a list ("1,,1") as 0.
    try:
        return [float(item) if item.strip() else 0.0 for item in text.split(",")]
    except ValueError:
        raise BlockSettingError(field, f"{text!r} is not a comma-separated list of numbers"
                                + (f" or one of {', '.join(PRESETS)}" if field != "mid_lr_weight" else "")) from None


def _preset(text: str, count: int, field: str) -> list[float]:
    name, _, base_text = text.partition("+")
    try:
        base = float(base_text) if base_text else 0.0
    except ValueError:
        raise BlockSettingError(field, f"the part after '+' in {text!r} must be a number") from None
    ramp = [i / (count - 1) for i in range(count)]
    values = {"sine": [math.sin(math.pi * r / 2) for r in ramp], "linear": ramp,
              "zeros": [0.0] * count}
    values["cosine"] = values["sine"][::-1]
    values["reverse_linear"] = ramp[::-1]
    if name.strip() not in values:
        raise BlockSettingError(field, f"{text!r} is neither a comma-separated list of {count} numbers "
                                f"nor a preset ({', '.join(PRESETS)}, optionally with +base)")
    return [v + base for v in values[name.strip()]]


def lr_weight_values(text: str, field: str, blocks: UnetBlocks) -> list[float] | None:
    """One of down/mid/up_lr_weight as numbers (None when empty). A shorter list is filled
    with 1 as sd-scripts fills it; a longer one is refused (sd-scripts drops the rest)."""
    text = text.strip()
    if not text:
        return None
    count = blocks.mid if field == "mid_lr_weight" else blocks.down_up
    if field != "mid_lr_weight" and "," not in text and not _is_number(text):
        values = _preset(text, count, field)
    else:
        values = _numbers(text, field)
    if len(values) > count:
        raise BlockSettingError(field, f"{len(values)} values given, this model's U-Net has {count} "
                                f"{_what(field)} (fewer are filled with 1)")
    if any(v < 0 for v in values):
        raise BlockSettingError(field, "weights must be 0 or more")
    return values + [1.0] * (count - len(values))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _what(field: str) -> str:
    return {"down_lr_weight": "down-block weights", "mid_lr_weight": "mid-block weights",
            "up_lr_weight": "up-block weights"}.get(field, "block values")


def block_lr_weights(network: NetworkParams, blocks: UnetBlocks) -> list[float] | None:
    """The learning-rate weight of every block (indexed as :meth:`UnetBlocks.index`), weights
    at or below block_lr_zero_threshold made 0; None when no lr weight is set."""
    parts = {field: lr_weight_values(getattr(network, field), field, blocks) for field in LR_WEIGHT_FIELDS}
    if all(values is None for values in parts.values()):
        return None
    threshold = network.block_lr_zero_threshold
    down, mid, up = ([w if w > threshold else 0.0 for w in values] if values is not None else [1.0] * count
                     for values, count in zip(parts.values(), (blocks.down_up, blocks.mid, blocks.down_up)))
    ends = [1.0] if blocks.ends else []
    return ends + down + mid + up + ends


def _block_list(text: str, field: str, blocks: UnetBlocks, whole: bool) -> list[float] | None:
    text = text.strip()
    if not text:
        return None
    values = _numbers(text, field)
    if len(values) != blocks.total:
        raise BlockSettingError(field, f"{len(values)} values given, this model's U-Net needs exactly "
                                f"{blocks.total} (one per block)")
    if any(v < 0 for v in values) or (whole and any(v != int(v) for v in values)):
        raise BlockSettingError(field, "each value must be a whole number of 0 or more"
                                if whole else "each value must be 0 or more")
    return values


@dataclass(frozen=True)
class BlockRanks:
    """Each block's (rank, alpha) for Linear and 1x1 modules, and for 3x3 convolutions."""

    dims: list[int]
    alphas: list[float]
    conv_dims: list[int] | None
    conv_alphas: list[float] | None


def block_ranks(network: NetworkParams, blocks: UnetBlocks) -> BlockRanks | None:
    """Per-block ranks from block_dims & co (the network's dim/alpha where a list is empty),
    blocks with a learning-rate weight of 0 given rank 0 (no module), as sd-scripts; None when
    neither block dims nor lr weights are set."""
    weights = block_lr_weights(network, blocks)
    dims = _block_list(network.block_dims, "block_dims", blocks, whole=True)
    if dims is None and weights is None:
        return None
    alphas = _block_list(network.block_alphas, "block_alphas", blocks, whole=False)
    conv_dims = _block_list(network.conv_block_dims, "conv_block_dims", blocks, whole=True)
    conv_alphas = _block_list(network.conv_block_alphas, "conv_block_alphas", blocks, whole=False)
    ranks = [int(d) for d in dims] if dims is not None else [network.dim] * blocks.total
    alpha_list = alphas if alphas is not None else [network.alpha] * blocks.total
    if conv_dims is None and network.type.has_conv:
        conv_dims, conv_alphas = [network.conv_dim] * blocks.total, [network.conv_alpha] * blocks.total
    elif conv_dims is not None and conv_alphas is None:
        conv_alphas = [network.conv_alpha] * blocks.total
    conv_ranks = [int(d) for d in conv_dims] if conv_dims is not None else None
    if weights is not None:
        for i, weight in enumerate(weights):
            if weight == 0:
                ranks[i] = 0
                if conv_ranks is not None:
                    conv_ranks[i] = 0
    return BlockRanks(ranks, alpha_list, conv_ranks, conv_alphas)


def block_weights(network: NetworkParams, blocks: UnetBlocks,
                  per_block: Sequence[tuple[int, int, int]]) -> int | None:
    """The U-Net's LoRA weights with each block at its own rank (as :func:`block_ranks` gives
    them, so a block of rank 0 or lr weight 0 counts nothing). ``per_block[b]`` holds block b's
    weights per rank of its LoRA modules, of LoCon's further Linear and 1x1 modules, and per
    conv rank of its 3x3 convolutions. None when no per-block setting applies, or one cannot be
    read (its own check names it): then the network's dim counts everywhere."""
    try:
        ranks = block_ranks(network, blocks)
    except BlockSettingError:
        return None
    if ranks is None:
        return None
    conv = network.type.has_conv
    total = 0
    for index, (flat, extra, convolutions) in enumerate(per_block):
        total += ranks.dims[index] * (flat + (extra if conv else 0))
        if conv and ranks.conv_dims is not None:
            total += ranks.conv_dims[index] * convolutions
    return total


def uses_blocks(network: NetworkParams) -> bool:
    """Whether any per-block setting is given."""
    return any(getattr(network, field).strip() for field in LR_WEIGHT_FIELDS + DIM_FIELDS)


def block_problems(network: NetworkParams, blocks: UnetBlocks) -> list[BlockSettingError]:
    """Every per-block setting that cannot be read for this U-Net, one error a field."""
    found: list[BlockSettingError] = []
    for field in LR_WEIGHT_FIELDS:
        try:
            lr_weight_values(getattr(network, field), field, blocks)
        except BlockSettingError as err:
            found.append(err)
    for field in DIM_FIELDS:
        try:
            _block_list(getattr(network, field), field, blocks, whole=field.endswith("dims"))
        except BlockSettingError as err:
            found.append(err)
    return found
