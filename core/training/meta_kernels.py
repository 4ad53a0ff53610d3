"""What a CUDA GPU would do that the meta device does not, for the VRAM forecast: autocast,
and the fused attention kernels.

**Autocast.** ``torch.autocast("cuda")`` casts only CUDA tensors, and a CPU build of PyTorch
cannot make even fake CUDA tensors through autograd, so on the meta device nothing would be
cast: frozen fp16 weights would meet fp32 activations. :class:`MetaCuda` applies CUDA
autocast's op lists itself, as a TorchFunctionMode: above autograd, as the real autocast sits,
so the casts are recorded and the half-precision copies are what backward saves. Ops of the
lower-precision list run in the autocast dtype, ops of the fp32 list in fp32 (group/layer norm
and softmax keep fp32 copies, as on a GPU), cat/stack in the widest input type; the half
copy of a leaf weight that requires grad (the LoRA) is cached for the region, as autocast's
cast cache does. The engine calls backward outside autocast; a checkpointed block's
recomputation ran under autocast in its forward pass, so the forecast wraps backward in the
mode too, where only recomputed forward code reaches it (autograd's own backward formulas are
C++ and never pass through a TorchFunctionMode).

**Attention.** On the meta device ``scaled_dot_product_attention`` would take the math path and
materialise the N x N attention matrix; CUDA picks the flash or memory-efficient kernel, which
stores only the output and a logsumexp per query row (fp32). :class:`FusedAttention` stands in
for that kernel: forward allocates the output (laid out as the kernel writes it, (B, L, H, D)
seen as (B, H, L, D), so the caller's transpose back is a view) and the logsumexp; backward
allocates dq, dk, dv and the fp32 dq accumulator and row sums flash's backward works in. It is
installed by MetaCuda for every call of scaled_dot_product_attention, with or without
autocast. With ``training.attention = "eager"`` the U-Net never calls it (the engine installs
diffusers' AttnProcessor), so the attention matrices count as eager attention makes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# CUDA autocast's lists (torch.amp docs, "CUDA Ops that can autocast to float16" / "to float32"),
# by function name; the ones diffusion models call matter, the rest are listed for fidelity.
LOWER_PRECISION = frozenset({
    "linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "addr",
    "mv", "prelu", "chain_matmul", "multi_dot", "scaled_dot_product_attention"})
FLOAT32 = frozenset({
    "group_norm", "layer_norm", "softmax", "log_softmax", "softmin", "softplus", "mse_loss", "l1_loss",
    "smooth_l1_loss", "cross_entropy", "nll_loss", "kl_div", "binary_cross_entropy_with_logits",
    "cosine_similarity", "normalize", "norm", "cumsum", "cumprod", "prod", "pow", "__pow__", "__rpow__",
    "exp", "expm1", "log", "log10", "log1p", "log2", "reciprocal", "rsqrt", "acos", "asin", "cosh", "sinh",
    "tan", "erfinv", "renorm", "pdist", "cdist", "dist"})
PROMOTE = frozenset({"cat", "stack", "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "tensordot",
                     "index_put", "scatter_add", "grid_sample"})


class FusedAttention(torch.autograd.Function):
    """The memory of CUDA's flash / memory-efficient attention: no N x N matrix."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        *batch, heads, length, _ = query.shape
        width = value.shape[-1]
        out = query.new_empty((*batch, length, heads, width)).transpose(-3, -2)
        logsumexp = query.new_empty((*batch, heads, length), dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query, key, value, _, logsumexp = ctx.saved_tensors
        accumulator = query.new_empty(query.shape, dtype=torch.float32)  # flash's dq in fp32
        row_sums = logsumexp.new_empty(logsumexp.shape)
        grads = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        del accumulator, row_sums
        return grads


def fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
    """scaled_dot_product_attention's result shape and memory (masks, dropout, scale and
    causality change neither)."""
    return FusedAttention.apply(query, key, value)


class MetaCuda(TorchFunctionMode):
    """CUDA's kernels and autocast for meta tensors (see the module docstring): attention is
    always the fused kernel's; casts happen inside :meth:`autocast` blocks. ``dtype`` None
    (fp32 training) casts nothing."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype
        self.casting = False
        self.cache_leaves = False
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextmanager
    def autocast(self, cache_leaves: bool = True) -> Iterator[None]:
        """A region where CUDA autocast would be on (accelerator.autocast() in the engine);
        ``cache_leaves`` False for backward, where each recomputed block casts anew."""
        before = self.casting, self.cache_leaves
        self.casting, self.cache_leaves = self.dtype is not None, cache_leaves
        try:
            yield
        finally:
            self.casting, self.cache_leaves = before
            if not self.casting:
                self._cache.clear()

    def follow_checkpoints(self, modules: Iterator[torch.nn.Module]) -> None:
        """Make gradient checkpointing recompute under this mode: autograd runs backward without
        the Python function modes, so a recomputed block would see no casts (a real autocast is
        re-entered by torch.utils.checkpoint from its saved state)."""
        for root in modules:
            for module in root.modules():
                original = getattr(module, "_gradient_checkpointing_func", None)
                if original is not None:
                    module._gradient_checkpointing_func = partial(_checkpoint_under, self, original)

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if self.cache_leaves and value.is_leaf and value.requires_grad:
            cached = self._cache.get(id(value))
            if cached is not None and cached[0] is value and cached[1].dtype == dtype:
                return cached[1]
            cast = value.to(dtype)
            self._cache[id(value)] = (value, cast)
            return cast
        return value.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's signature
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.casting and self.dtype is not None:
            target = None
            if name in LOWER_PRECISION:
                target = self.dtype
            elif name in FLOAT32:
                target = torch.float32
            elif name in PROMOTE:
                floats = [v.dtype for v in _tensors((args, kwargs)) if v.is_floating_point()]
                target = max(floats, key=lambda d: torch.finfo(d).bits) if floats else None
            if target is not None:
                args, kwargs = tree_map(lambda v: self._cast(v, target), (args, kwargs))
        if name == "scaled_dot_product_attention":
            return fused_attention(*args, **kwargs)
        return func(*args, **kwargs)


def _checkpoint_under(mode: MetaCuda, checkpoint: Any, function: Any, *args: Any, **kwargs: Any) -> Any:
    def run(*inner: Any, **options: Any) -> Any:
        from torch.overrides import _get_current_function_mode_stack

        if any(m is mode for m in _get_current_function_mode_stack()):
            return function(*inner, **options)
        with mode:
            return function(*inner, **options)

    return checkpoint(run, *args, **kwargs)


def _tensors(tree: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [v for v in tree_leaves(tree) if isinstance(v, torch.Tensor)]
