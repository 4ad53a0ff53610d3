"""peft LoRA weights <-> Kohya's LoRA file layout (sd-scripts' networks/lora.py), both ways.

The family names each module (core.models.family.Family.kohya_name): for SD 1.x "lora_unet"
or "lora_te", "_", and the module path with every "." replaced by "_". Each module holds ``.lora_down.weight`` (peft's lora_A), ``.lora_up.weight``
(peft's lora_B) and ``.alpha``, a 0-dim float: the real alpha, so a loader computes the
scale alpha / rank that training used. diffusers' own converter writes the text encoder
as ``lora_te1_`` and alpha = rank, which SD 1.x front ends read at the wrong strength.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.models.lora import LoraHandles

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from core.models.family import Family

DOWN, UP, ALPHA = "lora_down.weight", "lora_up.weight", "alpha"
# Cross-attention context width -> model family (SD 1.x CLIP-L, SD 2.x OpenCLIP-H, SDXL).
_CONTEXT_DIMS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


class KohyaFormatError(ValueError):
    """A LoRA file that cannot be used as asked; the message says why and what to do."""


@dataclass
class LoadReport:
    loaded: int  # modules whose weights were set from the file
    missing: list[str] = field(default_factory=list)  # Kohya names the model has, the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys that fit no module


@dataclass
class LoraSummary:
    architecture: str  # "sd1", "sd2", "sdxl" or "unknown"
    n_modules: int
    n_unet: int
    n_te: int
    dims: set[int]  # ranks of the Linear and 1x1 modules (network_dim)
    alphas: set[float]
    has_conv: bool  # any module with a larger kernel (LoCon's 3x3 convolutions)
    conv_dims: set[int] = field(default_factory=set)  # ranks of those (conv_dim)
    conv_alphas: set[float] = field(default_factory=set)


def to_kohya_state_dict(handles: LoraHandles, family: Family, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every attached module as Kohya's three tensors, on the CPU, cast to ``dtype``."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for component, path, layer in handles.layers():
        _, alpha = handles.targets[component][path]
        name = family.kohya_name(component, path)
        down, up = handles.down_up(layer)
        # copy=True: the file must not share storage with weights training keeps changing.
        tensors[f"{name}.{DOWN}"] = down.detach().to("cpu", dtype, copy=True).contiguous()
        tensors[f"{name}.{UP}"] = up.detach().to("cpu", dtype, copy=True).contiguous()
        # sd-scripts keeps alpha as an fp32 buffer and casts it with the weights on save.
        tensors[f"{name}.{ALPHA}"] = torch.tensor(float(alpha), dtype=torch.float32).to(dtype)
    return tensors


def _split(key: str) -> tuple[str, str]:
    name, _, rest = key.partition(".")
    return name, rest


def _alpha_matches(file_alpha: torch.Tensor | None, rank: int, wanted: float) -> bool:
    import torch

    if file_alpha is None:  # no alpha in the file: loaders use scale 1, i.e. alpha = rank
        return float(rank) == wanted
    # Compare at the file's precision: 0.1 saved in fp16 reads back as 0.0999755859375.
    return file_alpha.float().item() == torch.tensor(wanted).to(file_alpha.dtype).float().item()


def _file_shape_text(summary: LoraSummary) -> str:
    text = (f"dim {', '.join(map(str, sorted(summary.dims))) or '-'} / "
            f"alpha {', '.join(f'{a:g}' for a in sorted(summary.alphas)) or '-'}")
    if summary.has_conv:
        text += (f", conv dim {', '.join(map(str, sorted(summary.conv_dims)))} / "
                 f"conv alpha {', '.join(f'{a:g}' for a in sorted(summary.conv_alphas))}")
    return text


def load_kohya_into(handles: LoraHandles, family: Family, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Set the attached LoRA weights from a Kohya state dict.

    Raises KohyaFormatError, before changing anything, when a module's rank or alpha in
    the file differs from the settings (the message gives the file's values so the
    caller can adopt them) or when a tensor's shape fits no module of this model.
    """
    import torch

    expected: dict[str, tuple[str, str, torch.nn.Module]] = {
        family.kohya_name(c, p): (c, p, layer) for c, p, layer in handles.layers()}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        name, rest = _split(key)
        if name in expected and rest in (DOWN, UP, ALPHA):
            grouped.setdefault(name, {})[rest] = tensor
        else:
            unexpected.append(key)

    plan: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    mismatched: list[str] = []
    loaded = 0
    incomplete: set[str] = set()
    for name, parts in grouped.items():
        component, path, layer = expected[name]
        rank, alpha = handles.targets[component][path]
        if DOWN not in parts or UP not in parts:
            unexpected.extend(f"{name}.{rest}" for rest in parts)
            incomplete.add(name)
            continue
        down, up = parts[DOWN], parts[UP]
        if down.shape[0] != rank or not _alpha_matches(parts.get(ALPHA), down.shape[0], alpha):
            mismatched.append(name)
            continue
        weight_down, weight_up = handles.down_up(layer)
        for param, tensor in ((weight_down, down), (weight_up, up)):
            if tensor.numel() != param.numel() or tensor.shape[0] != param.shape[0]:
                raise KohyaFormatError(
                    f"{name}: the file's tensor has shape {tuple(tensor.shape)}, this model needs "
                    f"{tuple(param.shape)}; the LoRA was made for another model")
            # reshape: a 1x1 convolution and a Linear layer hold the same numbers.
            plan.append((param, tensor.reshape(param.shape)))
        loaded += 1
    if mismatched:
        summary = describe_lora(state_dict, {})
        net = handles.network
        raise KohyaFormatError(
            f"the LoRA file has {_file_shape_text(summary)}, but the settings say dim {net.dim} / "
            f"alpha {net.alpha:g}" + (f", conv dim {net.conv_dim} / conv alpha {net.conv_alpha:g}"
                                      if summary.has_conv else "")
            + f" ({len(mismatched)} modules differ, e.g. {mismatched[0]}); set the network "
            "dim and alpha to the file's values to continue training it")
    with torch.no_grad():
        for param, tensor in plan:
            param.copy_(tensor.to(param.dtype))
    missing = [name for name in expected if name not in grouped or name in incomplete]
    return LoadReport(loaded=loaded, missing=missing, unexpected=unexpected)


def read_kohya_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a LoRA file; .safetensors, or a pickle-free torch file."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        return tensors, metadata
    import torch

    import pickle

    try:
        # weights_only: an old .pt LoRA is loaded without running code from the file.
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises loading unsafely: never relay that for a file from elsewhere.
        raise KohyaFormatError(f"{path.name}: holds Python objects besides tensors, which are not loaded "
                               "because loading them could run code; use a .safetensors version of "
                               "this LoRA") from None
    except Exception as err:  # noqa: BLE001 - any failure means "not a LoRA we can read"
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise KohyaFormatError(f"{path.name}: cannot read it as a LoRA file ({detail})") from None
    if not isinstance(loaded, dict) or not all(hasattr(v, "shape") for v in loaded.values()):
        raise KohyaFormatError(f"{path.name}: not a LoRA state dict")
    return dict(loaded), {}


_SDXL_BLOCK = re.compile(r"^lora_unet_(input_blocks|output_blocks|middle_block)_.*transformer_blocks_[1-9]")


def _architecture(modules: dict[str, dict[str, torch.Tensor]], metadata: dict[str, str]) -> str:
    names = list(modules)
    if any(n.startswith(("lora_te1_", "lora_te2_")) for n in names):
        return "sdxl"
    for name, parts in modules.items():
        if name.startswith("lora_unet_") and name.endswith("attn2_to_k") and DOWN in parts:
            found = _CONTEXT_DIMS.get(int(parts[DOWN].shape[1]))
            if found:
                return found
    version = metadata.get("ss_base_model_version", "")
    spec = metadata.get("modelspec.architecture", "")
    if version.startswith("sdxl") or spec.startswith("stable-diffusion-xl"):
        return "sdxl"
    if version.startswith("sd_v2") or spec.startswith("stable-diffusion-v2") or metadata.get("ss_v2") == "True":
        return "sd2"
    if version.startswith("sd_v1") or spec.startswith("stable-diffusion-v1"):
        return "sd1"
    # SDXL's attention blocks stack up to ten transformer blocks; SD 1.x/2.x have one.
    if any(_SDXL_BLOCK.match(n) for n in names):
        return "sdxl"
    for name, parts in modules.items():
        if name.startswith("lora_te_") and name.endswith("q_proj") and DOWN in parts:
            found = {768: "sd1", 1024: "sd2"}.get(int(parts[DOWN].shape[1]))
            if found:
                return found
    return "unknown"


def describe_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraSummary:
    """What a LoRA file holds: its model family, module counts, ranks and alphas."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        name, rest = _split(key)
        modules.setdefault(name, {})[rest] = tensor
    summary = LoraSummary(architecture=_architecture(modules, metadata), n_modules=0, n_unet=0,
                          n_te=0, dims=set(), alphas=set(), has_conv=False)
    for name, parts in modules.items():
        down = parts.get(DOWN)
        if down is None:
            continue
        summary.n_modules += 1
        summary.n_unet += name.startswith("lora_unet_")
        summary.n_te += name.startswith("lora_te")
        rank = int(down.shape[0])
        alpha = float(parts[ALPHA].float().item()) if ALPHA in parts else float(rank)
        if down.dim() == 4 and tuple(down.shape[2:]) != (1, 1):
            summary.has_conv = True
            summary.conv_dims.add(rank)
            summary.conv_alphas.add(alpha)
        else:
            summary.dims.add(rank)
            summary.alphas.add(alpha)
    return summary


_LABELS = {"sd1": "SD 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}


def ensure_family(summary: LoraSummary, family: Family, what: str = "this LoRA") -> None:
    """Refuse a LoRA made for another model family than ``family``'s, saying which one."""
    if summary.architecture not in ("unknown", family.lora_architecture):
        made_for = _LABELS.get(summary.architecture, summary.architecture)
        raise KohyaFormatError(
            f"{what} was made for {made_for}; the base model is {family.label}, so it cannot be "
            f"loaded into it. Choose a {family.label} LoRA or start from scratch.")
