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
from typing import TYPE_CHECKING, Any

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
    network: str = "LoRA"  # as network_label names it: "LoRA", "LoCon", "LoHa", "LoKr + DoRA", ...
    full_rank: int = 0  # LoKr modules stored as whole factors (no dim; scale 1)


def to_kohya_state_dict(handles: LoraHandles, family: Family, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every attached module as Kohya's three tensors, on the CPU, cast to ``dtype``."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for component, path, layer in handles.layers():
        _, alpha = handles.targets[component][path]
        name = family.kohya_name(component, path)
        if handles.is_lycoris(layer):
            for rest, tensor in layer.file_tensors().items():
                tensors[f"{name}.{rest}"] = tensor.detach().to("cpu", dtype, copy=True).contiguous()
            continue
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

    _ensure_same_type(state_dict, handles)
    expected: dict[str, tuple[str, str, torch.nn.Module]] = {
        family.kohya_name(c, p): (c, p, layer) for c, p, layer in handles.layers()}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        name, rest = _split(key)
        if name in expected and rest in _parts_of(handles, expected[name][2]):
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
        if handles.is_lycoris(layer):
            if not _plan_lycoris(name, layer, parts, plan, mismatched, unexpected, incomplete):
                continue
            loaded += 1
            continue
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


def _ensure_same_type(state_dict: dict[str, torch.Tensor], handles: LoraHandles) -> None:
    """Refuse a file of another network type (LoHa into LoKr, DoRA into plain LoRA): none of its
    tensors would fit, and the message should say why. LoRA and LoCon share one layout."""
    summary = describe_lora(state_dict, {})
    wanted = network_label(handles.network)
    if summary.n_modules and summary.network.replace("LoCon", "LoRA") != wanted.replace("LoCon", "LoRA"):
        raise KohyaFormatError(
            f"the LoRA file is a {summary.network} network, but the settings say {wanted}; set the network "
            "type (and DoRA) to the file's to continue training it")


def _parts_of(handles: LoraHandles, layer: torch.nn.Module) -> tuple[str, ...]:
    if handles.is_lycoris(layer):
        return tuple(layer.file_tensors())
    return (DOWN, UP, ALPHA)


def _plan_lycoris(name: str, layer: torch.nn.Module, parts: dict[str, torch.Tensor],
                  plan: list[tuple[torch.nn.Parameter, torch.Tensor]], mismatched: list[str],
                  unexpected: list[str], incomplete: set[str]) -> bool:
    """Queue the copies of one LyCORIS module's tensors; False when it cannot be loaded."""
    own = layer.file_tensors()
    needed = [rest for rest in own if rest not in (ALPHA, "on_input")]
    if any(rest not in parts for rest in needed):
        unexpected.extend(f"{name}.{rest}" for rest in parts)
        incomplete.add(name)
        return False
    if ALPHA in own and not _alpha_matches(parts.get(ALPHA), layer.rank, float(own[ALPHA])):
        mismatched.append(name)
        return False
    if "on_input" in parts and bool(parts["on_input"].item()) != bool(own["on_input"].item()):
        mismatched.append(name)
        return False
    for rest in needed:
        param, tensor = own[rest], parts[rest]
        if tensor.numel() != param.numel():  # another dim, factor or model
            mismatched.append(name)
            return False
        # reshape: LyCORIS flattens some factors of 1x1 convolutions, and so may others.
        plan.append((param, tensor.reshape(param.shape)))
    return True


def network_label(network: Any) -> str:
    """How a file or the settings name the network type: "LoRA", "LoCon", "LoHa", "LoKr",
    "IA3", with " + DoRA" when weight-decomposed."""
    from core.config.schema import NetworkType

    label = NetworkType(network.type).value
    return label + " + DoRA" if getattr(network, "dora_wd", False) else label


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
        if name.startswith("lora_unet_") and name.endswith("attn2_to_k") and _in_features(parts):
            found = _CONTEXT_DIMS.get(_in_features(parts) or 0)
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
        if name.startswith("lora_te_") and name.endswith("q_proj") and _in_features(parts):
            found = {768: "sd1", 1024: "sd2"}.get(_in_features(parts) or 0)
            if found:
                return found
    return "unknown"


# Module names (Kohya's, SD 1.x and SDXL) of the 3x3 convolutions: ResNet conv1/conv2
# (in_layers_2/out_layers_3), the downsamplers' conv (op) and the upsamplers' conv.
_CONV_NAME = re.compile(r"(conv1|conv2|_conv|_op|in_layers_2|out_layers_3)$")


def module_kind(parts: dict[str, torch.Tensor]) -> str | None:
    """The network type of one module's tensors, or None when they are no network module."""
    if DOWN in parts:
        return "LoRA"
    if "hada_w1_a" in parts:
        return "LoHa"
    if "lokr_w1" in parts or "lokr_w1_a" in parts:
        return "LoKr"
    if "weight" in parts and "on_input" in parts:
        return "IA3"
    return None


def module_rank(kind: str, parts: dict[str, torch.Tensor]) -> int | None:
    """The dim of one module (None: IA3, or a LoKr module with whole factors)."""
    if kind == "LoRA":
        return int(parts[DOWN].shape[0])
    if kind == "LoHa":
        return int(parts["hada_w1_b"].shape[0])
    if kind == "LoKr":
        low = parts.get("lokr_w1_b", parts.get("lokr_w2_b"))
        return None if low is None else int(low.shape[0])
    return None


def _in_features(parts: dict[str, torch.Tensor]) -> int | None:
    kind = module_kind(parts)
    if kind == "LoRA":
        return int(parts[DOWN].shape[1])
    if kind == "LoHa":
        return int(parts["hada_w1_b"].shape[1])
    if kind == "LoKr":
        w1 = parts.get("lokr_w1", parts.get("lokr_w1_b"))
        w2 = parts.get("lokr_w2", parts.get("lokr_w2_b"))
        return None if w1 is None or w2 is None else int(w1.shape[1]) * int(w2.shape[1])
    return None


def describe_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraSummary:
    """What a LoRA file holds: its model family, network type, module counts, ranks and alphas."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        name, rest = _split(key)
        modules.setdefault(name, {})[rest] = tensor
    summary = LoraSummary(architecture=_architecture(modules, metadata), n_modules=0, n_unet=0,
                          n_te=0, dims=set(), alphas=set(), has_conv=False)
    kinds: set[str] = set()
    dora = False
    for name, parts in modules.items():
        kind = module_kind(parts)
        if kind is None:
            continue
        kinds.add(kind)
        dora = dora or "dora_scale" in parts
        summary.n_modules += 1
        summary.n_unet += name.startswith("lora_unet_")
        summary.n_te += name.startswith("lora_te")
        rank = module_rank(kind, parts)
        if rank is None:
            summary.full_rank += kind == "LoKr"
            continue
        alpha = float(parts[ALPHA].float().item()) if ALPHA in parts else float(rank)
        down = parts.get(DOWN)
        if down is not None:
            conv = down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
        else:
            conv = bool(_CONV_NAME.search(name))
        if conv:
            summary.has_conv = True
            summary.conv_dims.add(rank)
            summary.conv_alphas.add(alpha)
        else:
            summary.dims.add(rank)
            summary.alphas.add(alpha)
    lycoris = sorted(kinds - {"LoRA"})
    label = "/".join(lycoris) if lycoris else ("LoCon" if summary.has_conv else "LoRA")
    summary.network = label + (" + DoRA" if dora else "")
    return summary


_LABELS = {"sd1": "SD 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}


def ensure_family(summary: LoraSummary, family: Family, what: str = "this LoRA") -> None:
    """Refuse a LoRA made for another model family than ``family``'s, saying which one."""
    if summary.architecture not in ("unknown", family.lora_architecture):
        made_for = _LABELS.get(summary.architecture, summary.architecture)
        raise KohyaFormatError(
            f"{what} was made for {made_for}; the base model is {family.label}, so it cannot be "
            f"loaded into it. Choose a {family.label} LoRA or start from scratch.")
