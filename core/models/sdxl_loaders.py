"""How an SDXL base model becomes a U-Net, a VAE, two text encoders and two tokenizers.

Single files (the original SAI/LDM layout users download) are built from a weightless config
folder (the shipped resources/sdxl unless told otherwise) with diffusers' own converters:
``model.diffusion_model.*`` the U-Net, ``conditioner.embedders.0.transformer.*`` CLIP-L,
``conditioner.embedders.1.model.*`` OpenCLIP bigG (fused attention projections, split by the
converter), ``first_stage_model.*`` the VAE. Diffusers folders load with ``local_files_only``.
What a file is gets checked from its tensor names before a weight is read, as for SD 1.x
(core.models.loaders, whose shared pieces are used here).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from core.models.checkpoint_files import (
    ModelLoadError,
    check_pickle_format,
    has_vae_weights,
    load_pickled,
    load_safetensors,
    read_safetensors_header,
)
from core.models.loaders import (
    Cancelled,
    Status,
    build_module,
    check_cancelled,
    check_folder_family,
    check_folder_layout,
    check_kind,
    load_vae_override,
    say,
    vae_from_state_dict,
    variant,
)
from core.models.sdxl_files import load_tokenizers

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

KIND = "sdxl"
LABEL = "SDXL"
# The parts of an SDXL single file, by the tensor-name prefix each must have.
FILE_PARTS = {"U-Net": "model.diffusion_model.", "text encoder 1 (CLIP-L)": "conditioner.embedders.0.transformer.",
              "text encoder 2 (OpenCLIP bigG)": "conditioner.embedders.1.model."}
FOLDER_PARTS = ("unet", "text_encoder", "text_encoder_2")


class SdxlParts(NamedTuple):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    tokenizer_2: CLIPTokenizer


def check_sdxl_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, naming the file, anything but a complete SDXL base checkpoint."""
    check_kind(path, shapes, KIND, LABEL)
    for part, prefix in FILE_PARTS.items():
        if not any(key.startswith(prefix) for key in shapes):
            raise ModelLoadError(f"{path.name} has no {part} weights ({prefix}*); the file is incomplete "
                                 "or not an SDXL base model: download it again or choose another")


def check_sdxl_model(path: Path) -> None:
    """The checks that read no weights (a .safetensors header, a pickle's first bytes, a
    folder's JSON configs), for validation before a run."""
    from core.models.checkpoint_files import SINGLE_FILE_SUFFIXES

    if path.is_dir():
        check_folder_layout(path)
        check_folder_family(path, KIND)
    elif path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                             f"{', '.join(SINGLE_FILE_SUFFIXES)} checkpoint or a diffusers folder")
    elif path.suffix.lower() == ".safetensors":
        check_sdxl_file(path, {k: shape for k, (_, shape) in read_safetensors_header(path).items()})
    else:
        check_pickle_format(path)


def load_single_file(path: Path, vae: str, config_dir: Path, cancelled: Cancelled, status: Status) -> SdxlParts:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    say(status, f"reading {path.name}…")
    state_dict: dict[str, Any] | None = None
    if path.suffix.lower() == ".safetensors":
        shapes = {k: shape for k, (_, shape) in read_safetensors_header(path).items()}
    else:
        state_dict = load_pickled(path)
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    check_sdxl_file(path, shapes)
    if not vae and not has_vae_weights(shapes):
        raise ModelLoadError(f"{path.name} has no VAE weights; choose a VAE file as the VAE override")
    check_cancelled(cancelled)
    if state_dict is None:
        state_dict = load_safetensors(path)
    config = str(config_dir)
    # No torch_dtype, as for SD 1.x: weights a file lacks must stay visible (on meta).
    common: dict[str, Any] = {"config": config, "local_files_only": True}

    check_cancelled(cancelled)
    say(status, "loading U-Net…")
    unet = build_module(path.name, "U-Net", lambda: UNet2DConditionModel.from_single_file(
        state_dict, subfolder="unet", **common), LABEL)
    check_cancelled(cancelled)
    if vae:
        vae_model = load_vae_override(vae, config_dir, cancelled, status)
    else:
        say(status, "loading VAE…")
        vae_model = vae_from_state_dict(state_dict, path.name, common)
    encoders = []
    for number, (cls, subfolder) in enumerate(((CLIPTextModel, "text_encoder"),
                                               (CLIPTextModelWithProjection, "text_encoder_2")), start=1):
        check_cancelled(cancelled)
        say(status, f"loading text encoder {number}…")
        encoders.append(build_module(path.name, f"text encoder {number}",
                                     lambda: _clip_from_state_dict(cls, state_dict, subfolder, config), LABEL))
    del state_dict
    check_cancelled(cancelled)
    say(status, "loading tokenizers…")
    return SdxlParts(unet, vae_model, encoders[0], encoders[1], *load_tokenizers(config_dir))


def _clip_from_state_dict(cls: type, state_dict: dict[str, Any], subfolder: str, config: str) -> Any:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm

    # diffusers tells the two encoders apart by width: the CLIP-L conversion is taken when the
    # model built from ``subfolder``'s config is as wide as conditioner.embedders.0, the
    # OpenCLIP one (in_proj split into q/k/v, text_projection transposed) for embedders.1.
    return create_diffusers_clip_model_from_ldm(cls, state_dict, subfolder=subfolder, config=config,
                                                local_files_only=True)


def load_folder(folder: Path, vae: str, config_dir: Path, cancelled: Cancelled, status: Status) -> SdxlParts:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    check_folder_layout(folder)
    check_folder_family(folder, KIND)
    for part in FOLDER_PARTS + (() if vae else ("vae",)):
        if not (folder / part / "config.json").is_file():
            raise ModelLoadError(f"{folder.name} has no {part}/config.json; the model folder is "
                                 "incomplete, copy or download it again")
    check_cancelled(cancelled)
    say(status, "loading U-Net…")
    unet = build_module(folder.name, "U-Net", lambda: UNet2DConditionModel.from_pretrained(
        str(folder), subfolder="unet", local_files_only=True, torch_dtype=torch.float32,
        **variant(folder / "unet")), LABEL)
    check_cancelled(cancelled)
    if vae:
        vae_model = load_vae_override(vae, config_dir, cancelled, status)
    else:
        say(status, "loading VAE…")
        vae_model = build_module(folder.name, "VAE", lambda: AutoencoderKL.from_pretrained(
            str(folder), subfolder="vae", local_files_only=True, torch_dtype=torch.float32,
            **variant(folder / "vae")), LABEL)
    encoders = []
    for number, (cls, subfolder) in enumerate(((CLIPTextModel, "text_encoder"),
                                               (CLIPTextModelWithProjection, "text_encoder_2")), start=1):
        check_cancelled(cancelled)
        say(status, f"loading text encoder {number}…")
        encoders.append(build_module(folder.name, f"text encoder {number}", lambda: cls.from_pretrained(
            str(folder / subfolder), local_files_only=True, dtype=torch.float32,
            **variant(folder / subfolder)), LABEL))
    check_cancelled(cancelled)
    say(status, "loading tokenizers…")
    return SdxlParts(unet, vae_model, encoders[0], encoders[1], *load_tokenizers(folder))
