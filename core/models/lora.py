"""Which modules get LoRA, attaching the adapters with peft, and the trainable parameters.

A family chooses the modules (core.models.family.Family.lora_targets) from the rules here.
The module choice is sd-scripts' (networks/lora.py): in the U-Net every Linear and Conv2d
inside a Transformer2DModel (all of them are Linear or 1x1, so all get the network dim);
with LoCon also every Linear and Conv2d inside ResnetBlock2D, Downsample2D and Upsample2D
(3x3 convolutions get conv_dim / conv_alpha, 1x1 convolutions and Linear layers such as
time_emb_proj the network dim / alpha). In the text encoder every Linear inside the CLIP
attention and MLP blocks. Full SD 1.5: 192 U-Net modules (278 with LoCon) and 72
text-encoder modules.

How module paths map to peft: ``peft.inject_adapter_in_model`` replaces the module at
path P *in place* with a peft LoRA layer, so P stays reachable with ``get_submodule``.
The original layer moves to ``P.base_layer``; the LoRA down projection is
``P.lora_A[ADAPTER]`` and the up projection ``P.lora_B[ADAPTER]`` (state-dict keys
``P.base_layer.weight``, ``P.lora_A.kiln.weight``, ``P.lora_B.kiln.weight``). For a
convolution peft builds lora_A with the base kernel, stride and padding and lora_B as a
1x1 convolution: exactly the shapes of Kohya's lora_down / lora_up. peft's scaling is
lora_alpha / r, Kohya's is alpha / dim: the same number.

torch and peft are imported inside the functions so that importing core stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config.schema import NetworkParams, NetworkType
from core.models.family import Targets

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from torch import nn

    from core.models.components import ModelComponents
    from core.models.family import Family

ADAPTER = "kiln"

# Class names, as sd-scripts matches them, so that attention classes renamed between
# transformers versions (CLIPSdpaAttention, ...) still match.
UNET_BLOCKS = frozenset({"Transformer2DModel"})
LOCON_BLOCKS = frozenset({"ResnetBlock2D", "Downsample2D", "Upsample2D"})
TEXT_ENCODER_BLOCKS = frozenset({"CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"})
# IA3 scales fewer layers, LyCORIS's "ia3" preset: the attention keys and values and the
# feed-forward's output projection (the last scaled on its input, see core.models.lycoris).
IA3_UNET_NAMES = ("to_k", "to_v", "ff.net.2")
IA3_TEXT_ENCODER_NAMES = ("k_proj", "v_proj", "fc2")


class LoraError(RuntimeError):
    """LoRA could not be attached as asked (peft built something other than we expected)."""


def effective_alpha(alpha: float, rank: int) -> float:
    """Kohya treats alpha 0 (or unset) as alpha = rank, i.e. no scaling."""
    return float(rank) if not alpha else float(alpha)


def _base_layer(module: nn.Module) -> nn.Module:
    # A model that already carries LoRA still reports the original layer's kind.
    base = getattr(module, "base_layer", None)
    return base if base is not None else module


def _collect(model: nn.Module, blocks: frozenset[str],
             spec: Callable[[nn.Module], tuple[int, float] | None],
             names: tuple[str, ...] | None = None) -> Targets:
    """Linear / Conv2d children of every module whose class is in ``blocks``, with their spec.

    ``spec(layer)`` returns (rank, alpha) or None to skip; ``names``, when given, keeps only
    children whose path within the block ends with one of them. Descendants of a peft layer
    (its base_layer and its lora_A / lora_B) are not modules of the network, so skipped.
    """
    from torch import nn

    targets: Targets = {}
    for name, module in model.named_modules():
        if type(module).__name__ not in blocks:
            continue
        wrapped: list[str] = []
        for child_name, child in module.named_modules():
            if not child_name or any(child_name.startswith(w + ".") for w in wrapped):
                continue
            layer = _base_layer(child)
            if layer is not child:
                wrapped.append(child_name)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                continue
            if names is not None and not any(child_name == n or child_name.endswith("." + n) for n in names):
                continue
            chosen = spec(layer)
            if chosen is not None:
                targets[f"{name}.{child_name}" if name else child_name] = chosen
    return targets


def unet_targets(unet: nn.Module, network: NetworkParams) -> Targets:
    """U-Net module path -> (rank, alpha) for the network type, alpha already resolved."""
    from torch import nn

    dim = network.dim
    alpha = effective_alpha(network.alpha, dim)
    conv_dim = network.conv_dim
    conv_alpha = effective_alpha(network.conv_alpha, conv_dim)

    def spec(layer: nn.Module) -> tuple[int, float] | None:
        if isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1):
            # sd-scripts gives larger kernels LoRA only when conv_dim is set (LoCon; LyCORIS's
            # LoHa and LoKr adapt the same blocks).
            return (conv_dim, conv_alpha) if locon else None
        return (dim, alpha)

    if network.type is NetworkType.IA3:
        return _collect(unet, UNET_BLOCKS, lambda layer: (1, 1.0), IA3_UNET_NAMES)
    locon = network.type.has_conv
    blocks = UNET_BLOCKS | LOCON_BLOCKS if locon else UNET_BLOCKS
    return _collect(unet, blocks, spec)


def clip_targets(text_encoder: nn.Module, network: NetworkParams) -> Targets:
    """CLIP text-encoder module path -> (rank, alpha): every Linear in its attention and MLP
    blocks; paths as the model names them."""
    from torch import nn

    pair = (1, 1.0) if network.type is NetworkType.IA3 else (network.dim, effective_alpha(network.alpha, network.dim))
    return _collect(text_encoder, TEXT_ENCODER_BLOCKS, lambda layer: pair if isinstance(layer, nn.Linear) else None,
                    IA3_TEXT_ENCODER_NAMES if network.type is NetworkType.IA3 else None)


def trained_components(family: Family, network: NetworkParams) -> tuple[str, ...]:
    """The components a run puts LoRA on: the U-Net, and every text encoder when
    network.train_text_encoder is on (as sd-scripts: both of SDXL's), less one of two
    switched off by network.train_text_encoder_1 / _2."""
    from core.config.schema import trained_text_encoders

    return (("unet",) if network.train_unet else ()) + trained_text_encoders(network, family.text_encoder_names)


@dataclass
class LoraHandles:
    """The models with LoRA attached, and where each adapter lives, by component name."""

    models: dict[str, nn.Module]  # every component of the family, trained or not
    targets: dict[str, Targets]  # the components with LoRA only
    network: NetworkParams
    adapter: str = ADAPTER

    def layers(self) -> Iterator[tuple[str, str, nn.Module]]:
        """(component, module path, peft LoRA layer) for every attached module."""
        for component, targets in self.targets.items():
            model = self.models[component]
            for path in targets:
                yield component, path, model.get_submodule(path)

    def down_up(self, layer: nn.Module) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The (lora_down, lora_up) weights of a peft layer: lora_A and lora_B."""
        return layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight

    @staticmethod
    def is_lycoris(layer: nn.Module) -> bool:
        """A core.models.lycoris module (LoHa, LoKr, IA3, DoRA) rather than a peft LoRA layer."""
        return hasattr(layer, "file_tensors")

    def block_params(self, family: Family) -> dict[int, list[torch.nn.Parameter]]:
        """The U-Net's trainable LoRA weights by block (core.models.blocks; -1 outside every
        block), blocks in the order their first module comes, as sd-scripts groups them."""
        found: dict[int, list[torch.nn.Parameter]] = {}
        for component, path, layer in self.layers():
            if component == "unet":
                index = family.unet_blocks.index(family.kohya_name("unet", path))
                found.setdefault(index, []).extend(layer.trainable() if self.is_lycoris(layer) else self.down_up(layer))
        return found

    def params(self, components: tuple[str, ...]) -> list[torch.nn.Parameter]:
        """The trainable LoRA weights of ``components``, for one optimizer group."""
        params: list[torch.nn.Parameter] = []
        for component, _, layer in self.layers():
            if component in components:
                params.extend(layer.trainable() if self.is_lycoris(layer) else self.down_up(layer))
        return params


def _pattern(path: str) -> str:
    # peft matches pattern keys as regexes anchored at a module-path boundary; escaping
    # makes each key match its one module and nothing else.
    return re.escape(path)


def inject_lora(model: nn.Module, targets: Targets, rank: int, alpha: float) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets),
        rank_pattern={_pattern(p): r for p, (r, _) in targets.items() if r != rank},
        alpha_pattern={_pattern(p): a for p, (_, a) in targets.items() if a != alpha},
        # Kohya drops out the hidden activations (after lora_down); peft's lora_dropout
        # drops the input instead, so it stays 0 and attach_lora adds Kohya's dropout.
        lora_dropout=0.0, bias="none", init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)


def check_and_prepare(model: nn.Module, targets: Targets) -> None:
    """Fail loudly if peft did not build what Kohya's file needs; LoRA weights in fp32."""
    import torch

    for path, (rank, alpha) in targets.items():
        layer = model.get_submodule(path)
        if not hasattr(layer, "lora_A") or ADAPTER not in layer.lora_A:
            raise LoraError(f"peft attached no LoRA to {path}")
        got_rank = layer.r[ADAPTER]
        scale = layer.scaling[ADAPTER]
        if got_rank != rank or abs(scale - alpha / rank) > 1e-9 * max(1.0, alpha / rank):
            raise LoraError(f"{path}: peft built rank {got_rank} and scale {scale}, "
                            f"expected rank {rank} and scale {alpha}/{rank}")
        for sub in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
            # peft gives the adapter the base weights' dtype; sd-scripts trains LoRA in
            # fp32 whatever the base model's precision, so do we.
            if sub.weight.dtype != torch.float32 and sub.weight.device.type != "meta":
                sub.float()
            sub.weight.requires_grad_(True)


def uses_lycoris_modules(network: NetworkParams) -> bool:
    """LoHa, LoKr, IA3 and anything with DoRA are core.models.lycoris modules; plain LoRA and
    LoCon stay peft layers."""
    return network.type.is_lycoris or network.dora_wd


def lycoris_algo(network: NetworkParams) -> str:
    """LyCORIS's algo name of the network type ("lora" and "locon" are one module there)."""
    return {NetworkType.LORA: "locon", NetworkType.LOCON: "locon", NetworkType.LOHA: "loha",
            NetworkType.LOKR: "lokr", NetworkType.IA3: "ia3"}[network.type]


def inject_lycoris(model: nn.Module, targets: Targets, network: NetworkParams) -> None:
    """Replace each target module in place by its core.models.lycoris wrapper (the original at
    ``path.base_layer``, as with peft), for module paths to keep their names."""
    from core.models.lycoris import IA3_ON_INPUT, make_layer

    algo = lycoris_algo(network)
    for path, (rank, alpha) in targets.items():
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        base = _base_layer(getattr(parent, child))
        layer = make_layer(algo, base, rank, alpha, dora=network.dora_wd, factor=network.lokr_factor,
                           full_matrix=network.lokr_full_matrix, decompose_both=network.lokr_decompose_both,
                           on_input=path.endswith(IA3_ON_INPUT))
        setattr(parent, child, layer)


def _dropout_hook(network: NetworkParams) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
    """sd-scripts' three dropouts of a LoRA module, in its order, on lora_down's output and only
    in training mode: module_dropout skips the whole module (its output is zeroed, which gives
    the module's output and gradients of a skipped module); network_dropout drops single hidden
    activations; rank_dropout zeroes whole ranks per sample and scales the rest by 1/(1-p),
    as if the rank were that much smaller."""
    import torch
    import torch.nn.functional as F

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        if network.module_dropout and float(torch.rand(1)) < network.module_dropout:
            return output * 0.0
        if network.dropout:
            output = F.dropout(output, p=network.dropout)
        if network.rank_dropout:
            # the rank is dim 1 of a convolution's (B, r, H, W), the last of a Linear's (B, [T,] r)
            rank_dim = 1 if output.dim() == 4 else output.dim() - 1
            shape = [1] * output.dim()
            shape[0], shape[rank_dim] = output.size(0), output.size(rank_dim)
            keep = torch.rand(shape, device=output.device) > network.rank_dropout
            output = output * keep.to(output.dtype) / (1.0 - network.rank_dropout)
        return output

    return hook


def _add_dropout(handles: LoraHandles, network: NetworkParams) -> None:
    hook = _dropout_hook(network)
    for _, _, layer in handles.layers():
        if not handles.is_lycoris(layer):  # validation refuses the dropouts for those
            layer.lora_A[handles.adapter].register_forward_hook(hook)


def per_block_targets(model: nn.Module, targets: Targets, family: Family, network: NetworkParams) -> Targets:
    """The U-Net's targets with block_dims & co applied: each module gets its block's rank and
    alpha (3x3 convolutions the conv block ones), and modules of a block with rank 0 or a
    learning-rate weight of 0 get no LoRA (core.models.blocks)."""
    from torch import nn

    from core.models.blocks import block_ranks

    blocks = family.unet_blocks
    ranks = block_ranks(network, blocks)
    if ranks is None:
        return targets
    chosen: Targets = {}
    for path, pair in targets.items():
        index = blocks.index(family.kohya_name("unet", path))
        if index >= 0:
            layer = _base_layer(model.get_submodule(path))
            conv = isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1)
            if conv and ranks.conv_dims is not None and ranks.conv_alphas is not None:
                rank, alpha = ranks.conv_dims[index], ranks.conv_alphas[index]
            else:
                rank, alpha = ranks.dims[index], ranks.alphas[index]
            if rank == 0:
                continue
            pair = (rank, effective_alpha(alpha, rank))
        chosen[path] = pair
    return chosen


def attach_lora(components: ModelComponents, family: Family, network: NetworkParams) -> LoraHandles:
    """Freeze the family's models and attach LoRA where the network parameters ask for it.

    The up weights start at zero (peft's default init, as Kohya's), so the models compute
    exactly what they computed before until the first optimizer step.
    """
    models = components.denoisers()
    for model in models.values():
        model.requires_grad_(False)
    targets = {name: family.lora_targets(name, models[name], network) for name in trained_components(family, network)}
    if "unet" in targets:
        targets["unet"] = per_block_targets(models["unet"], targets["unet"], family, network)
    targets = {name: found for name, found in targets.items() if found}
    if not targets:
        raise LoraError("nothing to train: both the U-Net and the text encoder are switched off")
    alpha = effective_alpha(network.alpha, network.dim)
    for name, found in targets.items():
        if uses_lycoris_modules(network):
            inject_lycoris(models[name], found, network)
        else:
            inject_lora(models[name], found, network.dim, alpha)
            check_and_prepare(models[name], found)
    handles = LoraHandles(models, targets, network)
    if network.dropout > 0 or network.rank_dropout > 0 or network.module_dropout > 0:
        _add_dropout(handles, network)
    return handles
