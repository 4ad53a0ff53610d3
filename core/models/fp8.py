"""fp8 base weights, as sd-scripts' ``--fp8_base`` / ``--fp8_base_unet``: the frozen weights of
the linear and convolution layers kept in float8_e4m3fn (1 byte an element instead of 2) and
cast up to the compute dtype layer by layer, as each layer runs.

sd-scripts casts whole models to fp8 and lets CUDA autocast cast each weight up when an op
uses it. That cast's result is what autograd saves for backward (a layer's input gradient
needs its weight), so without gradient checkpointing every layer's upcast copy stays alive
until backward reaches it, and the saving is gone. Here a layer runs through a small autograd
function that saves the fp8 weight it already holds and casts it up again in backward: only
the layer running has its weight in the compute dtype, with or without checkpointing.

Only the weights of plain ``nn.Linear`` and ``nn.Conv2d`` layers whose weight is frozen are
stored in fp8 (they are nearly all of a U-Net's and a CLIP encoder's bytes). The rest keeps the
compute dtype: norms, because their kernels take no fp8 parameters and their few values scale
every activation; embeddings, because ``nn.Embedding`` has no fp8 lookup (sd-scripts keeps the
text encoders' embeddings in the training dtype for the same reason); biases, because they are
small and are added, not multiplied, so rounding them to 3 mantissa bits costs precision and
saves nearly nothing. The LoRA layers (trainable, fp32) are untouched, so the LoRA trains and
saves as without fp8.

A layer's compute dtype is the autocast dtype where autocast is on (CUDA in the step, the CPU
in bf16 runs), else the dtype the frozen weights would have had (setup.weight_dtype): the
model computes what it computed before, from weights rounded to e4m3. torch is imported at
module level: only setup.prepare_network and tests import this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config.schema import ModelParams

STORAGE_DTYPE = torch.float8_e4m3fn


def fp8_components(model: ModelParams, names: Iterable[str]) -> tuple[str, ...]:
    """Which of the components ``names`` ("unet", "text_encoder", ...) keep fp8 weights, as
    sd-scripts reads its two switches: either puts the U-Net in fp8; fp8_base also the text
    encoders, unless fp8_base_unet keeps them in the training precision."""
    if not (model.fp8_base or model.fp8_base_unet):
        return ()
    encoders = model.fp8_base and not model.fp8_base_unet
    return tuple(name for name in names if name == "unet" or encoders)


def _compute_dtype(x: torch.Tensor, default: torch.dtype) -> torch.dtype:
    device = x.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return default


class _LinearFromFp8(torch.autograd.Function):
    """F.linear with an fp8 weight cast up for the call; backward recasts it (see the module
    docstring). The weight and bias are frozen: only the input gets a gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype = x.dtype
        return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype)).to(ctx.input_dtype), None, None, None


class _Conv2dFromFp8(torch.autograd.Function):
    """F.conv2d (zero padding) with an fp8 weight cast up for the call, as _LinearFromFp8."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_dtype, ctx.input_shape = x.dtype, x.shape
        ctx.geometry = stride, padding, dilation, groups
        return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                        stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        none = (None,) * 7
        if not ctx.needs_input_grad[0]:
            return (None, *none)
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad_input = torch.nn.grad.conv2d_input(ctx.input_shape, weight.to(grad.dtype), grad,
                                                stride, padding, dilation, groups)
        return (grad_input.to(ctx.input_dtype), *none)


class Fp8Linear(nn.Linear):
    """An nn.Linear whose frozen weight is stored in fp8 (made by :func:`store_in_fp8`)."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearFromFp8.apply(x, self.weight, self.bias, _compute_dtype(x, self.compute_dtype))


class Fp8Conv2d(nn.Conv2d):
    """An nn.Conv2d whose frozen weight is stored in fp8 (made by :func:`store_in_fp8`)."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Conv2dFromFp8.apply(x, self.weight, self.bias, _compute_dtype(x, self.compute_dtype),
                                    self.stride, self.padding, self.dilation, self.groups)


# Exact types: a subclass may have a forward of its own that this would bypass.
_FP8_CLASS: dict[type, type] = {nn.Linear: Fp8Linear, nn.Conv2d: Fp8Conv2d}


def _convertible(layer: nn.Module) -> bool:
    if type(layer) not in _FP8_CLASS or layer.weight.requires_grad:
        return False
    # conv2d_input (backward) takes explicit zero padding; U-Nets and CLIP use nothing else.
    return not isinstance(layer, nn.Conv2d) or (layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def store_in_fp8(module: nn.Module, compute_dtype: torch.dtype) -> int:
    """Store the frozen weight of every plain Linear and Conv2d in ``module`` (LoRA's base
    layers included, its own trainable layers not) in float8_e4m3fn, to be cast up to
    ``compute_dtype`` (or the autocast dtype) as each runs. Returns how many layers changed.

    The layer's class becomes its fp8 twin (a subclass, so ``isinstance`` checks, state-dict
    keys and ``.to(device)`` behave as before); the cast saturates at e4m3's +-448, far above
    any diffusion model's weight."""
    names = []
    for path, layer in module.named_modules():
        if not _convertible(layer):
            continue
        layer.weight.data = layer.weight.data.to(STORAGE_DTYPE)
        layer.__class__ = _FP8_CLASS[type(layer)]
        layer.compute_dtype = compute_dtype
        names.append(f"{path}.weight" if path else "weight")
    # DDP broadcasts every parameter from the first process when it wraps a model, and gloo
    # (and older NCCL) cannot send fp8. Frozen base weights need no syncing: every process
    # loads them from the same file.
    ignored = list(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored + names)
    return len(names)


def fp8_layers(module: nn.Module) -> list[str]:
    """The module paths of the layers :func:`store_in_fp8` changed."""
    return [name for name, layer in module.named_modules() if isinstance(layer, (Fp8Linear, Fp8Conv2d))]


def store_components_in_fp8(model: ModelParams, components: dict[str, nn.Module],
                            compute_dtype: torch.dtype) -> str | None:
    """:func:`store_in_fp8` on the components the model settings name (see fp8_components),
    after they have been cast to their training dtype; a line for the run's log, None when
    fp8 is off."""
    chosen = fp8_components(model, components)
    if not chosen:
        return None
    counts = {name: store_in_fp8(components[name], compute_dtype) for name in chosen}
    return ("fp8 base weights: frozen linear and convolution weights stored as float8_e4m3fn, cast up to "
            f"{str(compute_dtype).removeprefix('torch.')} (or the autocast dtype) layer by layer: "
            + ", ".join(f"{name} {count} layers" for name, count in counts.items()))
