"""LyCORIS network modules -- LoHa, LoKr, IA3, and LoRA/LoCon with DoRA -- in LyCORIS's file layout.

peft cannot write these: its LoHa/LoKr differ from LyCORIS in names and in details front ends
rely on (LoKr's factorisation and when a factor is full rank, where IA3 scales), and its
DoRA has no file form that ComfyUI or AUTOMATIC1111 read. So each type is a small module that
wraps the original layer in place, as peft does: the layer at path P becomes this wrapper,
the original stays at ``P.base_layer`` (frozen, untouched), and the trained tensors are
parameters named as the file names them (``P.hada_w1_a`` -> ``lora_unet_..._P.hada_w1_a``).

Each wrapper computes the weight change dW of its type from its tensors, and adds
``op(x, dW)`` to the base layer's output -- the same as running the layer with W + dW, which
is how ComfyUI, AUTOMATIC1111/Forge and sd-scripts apply the file. The formulas (LyCORIS's,
with scale = alpha / dim):

- LoHa: dW = (hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) * scale (elementwise product;
  for a convolution the ``_b`` factors span in_channels * kh * kw).
- LoKr: dW = kron(w1, w2) * scale, with w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b and w2 = lokr_w2
  or lokr_w2_a @ lokr_w2_b; each dimension splits into factors (see :func:`factorization`),
  w1 gets the smaller ones. A factor is stored whole when the dim is at least half its larger
  side (or with full_matrix); when both are whole the scale is 1.
- IA3: dW = W * w along the output rows (or the input columns when ``on_input``): the layer's
  output (or input) scaled by 1 + w.
- DoRA (dora_wd): W' = (W + dW) * dora_scale / ||W + dW||, the norm per output channel;
  ``dora_scale`` starts as ||W|| so the layer is unchanged until trained.

The modules are created on the base layer's device (the meta device for the VRAM forecast)
in float32, and start with dW = 0 as LyCORIS's do.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

# LyCORIS's own ``on_input`` choice in its "ia3" preset: keys and values are scaled on their
# outputs, the feed-forward's last projection on its input.
IA3_ON_INPUT = ("ff.net.2", "mlp.fc2")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m * n = dimension and m <= n: m = factor when it divides dimension, else
    the most nearly square split whose smaller side is at most factor (-1: no bound).
    LyCORIS's rule, which a LoKr file's shapes follow: 320 -> (16, 20), 768 with 8 -> (8, 96)."""
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    bound = dimension if factor < 0 else factor
    m, n = 1, dimension
    candidate = m
    while m < n:
        candidate += 1
        while dimension % candidate:
            candidate += 1
        other = dimension // candidate
        if candidate + other > m + n or candidate > bound:
            break
        m, n = candidate, other
    return min(m, n), max(m, n)


def _row_norm(weight: torch.Tensor) -> torch.Tensor:
    """||W|| of each output channel, shaped to broadcast over W: (out, 1) or (out, 1, 1, 1)."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.dim() - 1))


class LycorisLayer(nn.Module, metaclass=ABCMeta):
    """A wrapped Linear or Conv2d; subclasses define the parameters and :meth:`delta_weight`."""

    algo = ""  # LyCORIS's name of the type ("loha", "lokr", "ia3", "locon")

    def __init__(self, base: nn.Module, rank: int, alpha: float, dora: bool) -> None:
        super().__init__()
        self.base_layer = base
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.is_conv = isinstance(base, nn.Conv2d)
        self.weight_shape = tuple(base.weight.shape)
        self.dora_scale: nn.Parameter | None = None
        if dora:
            self.dora_scale = nn.Parameter(_row_norm(base.weight.detach().float()))

    # ---- what a subclass provides
    @abstractmethod
    def delta_weight(self) -> torch.Tensor:
        """dW, in the base weight's shape, scale included (DoRA not applied)."""

    @abstractmethod
    def _factors(self) -> dict[str, nn.Parameter]:
        """The trained tensors by their names in the file (without dora_scale)."""

    # ---- shared
    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of this module in the file, by suffix (``hada_w1_a``, ``alpha``, ...)."""
        tensors: dict[str, torch.Tensor] = dict(self._factors())
        tensors["alpha"] = torch.tensor(float(self.alpha))
        if self.dora_scale is not None:
            tensors["dora_scale"] = self.dora_scale
        return tensors

    def trainable(self) -> list[nn.Parameter]:
        params = list(self._factors().values())
        return params + ([self.dora_scale] if self.dora_scale is not None else [])

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_conv:
            base = self.base_layer
            return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, weight, bias)

    def merged_weight(self) -> torch.Tensor:
        """W + dW, and DoRA's rescaling when on: the weight a front end computes from the file."""
        delta = self.delta_weight()
        weight = self.base_layer.weight.to(delta.dtype) + delta
        if self.dora_scale is None:
            return weight
        norm = _row_norm(weight) + torch.finfo(weight.dtype).eps
        return weight * (self.dora_scale / norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dora_scale is not None:
            return self._op(x, self.merged_weight().to(x.dtype), self.base_layer.bias)
        return self.base_layer(x) + self._op(x, self.delta_weight().to(x.dtype))


def _param(*shape: int, device: torch.device) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device=device, dtype=torch.float32))


def _kaiming(param: nn.Parameter) -> None:
    nn.init.kaiming_uniform_(param, a=math.sqrt(5))


class LoconLayer(LycorisLayer):
    """LoRA / LoCon in LyCORIS's form, used for DoRA: lora_down [r, in, kh, kw], lora_up [out, r, 1, 1]."""

    algo = "locon"

    def __init__(self, base: nn.Module, rank: int, alpha: float, dora: bool) -> None:
        super().__init__(base, rank, alpha, dora)
        out_dim, in_dim, *kernel = self.weight_shape
        device = base.weight.device
        self.lora_down = _param(rank, in_dim, *kernel, device=device)
        self.lora_up = _param(out_dim, rank, *([1] * len(kernel)), device=device)
        _kaiming(self.lora_down)
        nn.init.zeros_(self.lora_up)

    def _factors(self) -> dict[str, nn.Parameter]:
        return {"lora_down.weight": self.lora_down, "lora_up.weight": self.lora_up}

    def delta_weight(self) -> torch.Tensor:
        up = self.lora_up.reshape(self.lora_up.shape[0], -1)
        down = self.lora_down.reshape(self.rank, -1)
        return (up @ down).reshape(self.weight_shape) * self.scale


class LohaLayer(LycorisLayer):
    """LoHa: two low-rank pairs multiplied elementwise."""

    algo = "loha"

    def __init__(self, base: nn.Module, rank: int, alpha: float, dora: bool) -> None:
        super().__init__(base, rank, alpha, dora)
        out_dim = self.weight_shape[0]
        in_dim = math.prod(self.weight_shape[1:])  # in_channels * kh * kw for a convolution
        device = base.weight.device
        self.hada_w1_a = _param(out_dim, rank, device=device)
        self.hada_w1_b = _param(rank, in_dim, device=device)
        self.hada_w2_a = _param(out_dim, rank, device=device)
        self.hada_w2_b = _param(rank, in_dim, device=device)
        # LyCORIS's init: the second pair's up factor at zero, so dW = 0 at the start.
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w1_b, std=1.0)
        nn.init.zeros_(self.hada_w2_a)
        nn.init.normal_(self.hada_w2_b, std=1.0)

    def _factors(self) -> dict[str, nn.Parameter]:
        return {"hada_w1_a": self.hada_w1_a, "hada_w1_b": self.hada_w1_b,
                "hada_w2_a": self.hada_w2_a, "hada_w2_b": self.hada_w2_b}

    def delta_weight(self) -> torch.Tensor:
        first = self.hada_w1_a @ self.hada_w1_b
        second = self.hada_w2_a @ self.hada_w2_b
        return (first * second).reshape(self.weight_shape) * self.scale


class LokrLayer(LycorisLayer):
    """LoKr: a Kronecker product of a small factor w1 and a large one w2 (low-rank or whole)."""

    algo = "lokr"

    def __init__(self, base: nn.Module, rank: int, alpha: float, dora: bool, *, factor: int = -1,
                 full_matrix: bool = False, decompose_both: bool = False) -> None:
        out_dim, in_dim, *kernel = tuple(base.weight.shape)
        out_l, out_k = factorization(out_dim, factor)
        in_m, in_n = factorization(in_dim, factor)
        w1_whole = full_matrix or not decompose_both or rank >= max(out_l, in_m) / 2
        w2_whole = full_matrix or rank >= max(out_k, in_n) / 2
        # Both factors whole: nothing is low-rank, so LyCORIS fixes the scale at 1 (alpha = dim).
        super().__init__(base, rank, float(rank) if w1_whole and w2_whole else alpha, dora)
        device = base.weight.device
        self.kernel = tuple(kernel)
        self.w2_shape = (out_k, in_n, *kernel)
        factors: dict[str, nn.Parameter] = {}
        if w1_whole:
            factors["lokr_w1"] = _param(out_l, in_m, device=device)
            _kaiming(factors["lokr_w1"])
        else:
            factors["lokr_w1_a"] = _param(out_l, rank, device=device)
            factors["lokr_w1_b"] = _param(rank, in_m, device=device)
            _kaiming(factors["lokr_w1_a"])
            _kaiming(factors["lokr_w1_b"])
        if w2_whole:
            factors["lokr_w2"] = _param(*self.w2_shape, device=device)
            nn.init.zeros_(factors["lokr_w2"])
        else:
            factors["lokr_w2_a"] = _param(out_k, rank, device=device)
            factors["lokr_w2_b"] = _param(rank, in_n * math.prod(kernel), device=device)
            _kaiming(factors["lokr_w2_a"])
            nn.init.zeros_(factors["lokr_w2_b"])
        for name, param in factors.items():
            self.register_parameter(name, param)
        self._names = tuple(factors)

    def _factors(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in self._names}

    def delta_weight(self) -> torch.Tensor:
        parts = self._factors()
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts["lokr_w2"] if "lokr_w2" in parts else (parts["lokr_w2_a"] @ parts["lokr_w2_b"]).reshape(self.w2_shape)
        w1 = w1.reshape(*w1.shape, *[1] * len(self.kernel))
        return torch.kron(w1, w2) * self.scale


class IA3Layer(LycorisLayer):
    """IA3: one learned scale per output (or input) channel, saved as ``weight`` and ``on_input``."""

    algo = "ia3"

    def __init__(self, base: nn.Module, on_input: bool) -> None:
        super().__init__(base, 1, 1.0, False)
        self.on_input = on_input
        width = self.weight_shape[1] if on_input else self.weight_shape[0]
        self.weight = nn.Parameter(torch.zeros(width, device=base.weight.device, dtype=torch.float32))

    def _factors(self) -> dict[str, nn.Parameter]:
        return {"weight": self.weight}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        # No alpha: IA3 has no rank to scale by. on_input tells loaders which axis w scales.
        return {"weight": self.weight, "on_input": torch.tensor(float(self.on_input))}

    def delta_weight(self) -> torch.Tensor:
        scales = self.weight.reshape(1, -1) if self.on_input else self.weight.reshape(-1, 1)
        scales = scales.reshape(*scales.shape, *[1] * (len(self.weight_shape) - 2))
        return self.base_layer.weight.to(scales.dtype) * scales


def make_layer(algo: str, base: nn.Module, rank: int, alpha: float, *, dora: bool = False, factor: int = -1,
               full_matrix: bool = False, decompose_both: bool = False, on_input: bool = False) -> LycorisLayer:
    """The wrapper of ``algo`` ("locon", "loha", "lokr", "ia3") around ``base``."""
    if algo == "loha":
        return LohaLayer(base, rank, alpha, dora)
    if algo == "lokr":
        return LokrLayer(base, rank, alpha, dora, factor=factor, full_matrix=full_matrix,
                         decompose_both=decompose_both)
    if algo == "ia3":
        return IA3Layer(base, on_input)
    if algo == "locon":
        return LoconLayer(base, rank, alpha, dora)
    raise ValueError(f"no LyCORIS module for {algo!r}")
