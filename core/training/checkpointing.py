"""Gradient checkpointing of the U-Net, with less kept for backward than diffusers keeps.

diffusers' ``enable_gradient_checkpointing`` recomputes each ResNet block and each transformer
*block* inside a Transformer2DModel, but not the Transformer2DModel's own GroupNorm, input
and output projections and residual: their outputs (the norm's in fp32 under autocast) stay
saved for backward at the feature map's full size. In SD 1.x every Transformer2DModel holds a
single transformer block, so recomputing the whole module instead keeps only its input, for
about the same recompute: the VRAM forecast of SD 1.5 at batch 3 went from 8.47 to 6.35 GB of
tensors at 1280 and from 2.94 to 2.60 GB at 512 (docs/benchmarks.md). sd-scripts' own U-Net
checkpoints the whole attention module in the same way.

Transformers of several blocks (SDXL: 2 and 10) keep diffusers' per-block recompute: a whole
module's recompute would hold every block's activations at once, more than the few feature
maps it saves at their small sizes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch


def enable_unet_checkpointing(unet: torch.nn.Module) -> int:
    """Checkpointing on for ``unet``; single-block transformers recomputed whole. Returns how
    many were. The recompute goes through the module's ``_gradient_checkpointing_func`` (set
    by diffusers), looked up at each call so that a caller may replace it (the VRAM forecast
    does, to recompute under its emulated autocast)."""
    unet.enable_gradient_checkpointing()  # type: ignore[operator]
    whole = 0
    for module in unet.modules():
        blocks = getattr(module, "transformer_blocks", None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) == 1 and \
                hasattr(module, "_gradient_checkpointing_func"):
            module.gradient_checkpointing = False  # the block is inside the module's recompute
            module.forward = functools.partial(_recomputed, module, module.forward)
            whole += 1
    return whole


def _recomputed(module: torch.nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # as diffusers decides: sampling runs without grad
        return forward(*args, **kwargs)
    # diffusers' checkpoint function passes positional arguments only; the keyword ones
    # (encoder_hidden_states, ...) ride in the closure, which non-reentrant checkpointing
    # (diffusers' choice) differentiates through.
    return module._gradient_checkpointing_func(functools.partial(forward, **kwargs), *args)
