"""How each kind of base model becomes a U-Net, a VAE, a text encoder and a tokenizer.

Single files are built from a weightless config folder (the shipped SD 1.5 one unless told
otherwise) and are checked by their tensor names before any weight is read; diffusers
folders load with ``local_files_only``. Every loader failure becomes a ModelLoadError that
names the file, and ``cancelled()`` is asked between components.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from core.models.checkpoint_files import (
    SINGLE_FILE_SUFFIXES,
    ModelLoadCancelled,
    ModelLoadError,
    check_pickle_format,
    folder_kind,
    has_vae_weights,
    load_pickled,
    load_safetensors,
    model_kind,
    normalise_clip_keys,
    read_safetensors_header,
    unet_in_channels,
)
from core.models.sd15_files import load_tokenizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

Cancelled = Callable[[], bool] | None
Status = Callable[[str], None] | None

# What each kind of file is, for the family that was asked to load it (core.models.
# checkpoint_files.model_kind). sd1 and sdxl are only wrong for the other family.
KIND_ERRORS = {
    "sd1": "{name} is an SD 1.x checkpoint; set model.family to sd1 (or auto) to train on it",
    "sdxl": "{name} is an SDXL checkpoint; set model.family to sdxl (or auto) to train on it",
    "sd2": "{name} is an SD 2.x checkpoint: SD 2.x is not supported yet; choose an SD 1.x or SDXL model",
    "sdxl_refiner": ("{name} is an SDXL refiner (one OpenCLIP text encoder, an aesthetic-score "
                     "time id), not a base model: LoRAs are trained on SDXL base 1.0 and its "
                     "fine-tunes; choose one of those"),
    "sd3": ("{name} is a Stable Diffusion 3 model (MMDiT joint_blocks): SD3 is not supported; "
            "choose an SD 1.x or SDXL model"),
    "flux": ("{name} is a Flux model (double_blocks / single_blocks): Flux is not supported; "
             "choose an SD 1.x or SDXL model"),
    "lora": ("{name} is a LoRA, not a base model: choose it under network.init_weights to "
             "continue training it, and pick an SD 1.x or SDXL checkpoint as the base model"),
    "sdxl_lora": ("{name} is an SDXL LoRA (lora_te1_/lora_te2_ or SDXL-sized keys), not a base "
                  "model: choose it under network.init_weights to continue training it, and pick "
                  "an SDXL checkpoint as the base model"),
    "unknown": ("{name} does not look like a Stable Diffusion 1.x checkpoint (no U-Net and "
                "CLIP text encoder weights in the original layout); choose an SD 1.x or SDXL "
                ".safetensors/.ckpt file or a diffusers folder"),
}


class Parts(NamedTuple):
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


# --- single-file checkpoints ---------------------------------------------------------------


def load_single_file(path: Path, vae: str, config_dir: Path, cancelled: Cancelled,
                     status: Status) -> Parts:
    from diffusers import UNet2DConditionModel

    say(status, f"reading {path.name}…")
    state_dict: dict[str, Any] | None = None
    if path.suffix.lower() == ".safetensors":
        shapes = {k: shape for k, (_, shape) in read_safetensors_header(path).items()}
    else:  # a pickle has to be opened to see its keys: keep it rather than open it twice
        state_dict = load_pickled(path)
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    check_kind(path, shapes)
    if not vae and not has_vae_weights(shapes):
        raise ModelLoadError(f"{path.name} has no VAE weights; choose a VAE file as the VAE "
                             "override")
    check_cancelled(cancelled)
    if state_dict is None:
        state_dict = load_safetensors(path)
    state_dict = normalise_clip_keys(state_dict)
    config = str(config_dir)
    # No torch_dtype: the loaders would cast before we can see weights the file lacked
    # (left on the meta device); they keep the model's float32 when none is given.
    common: dict[str, Any] = {"config": config, "local_files_only": True}

    check_cancelled(cancelled)
    say(status, "loading U-Net…")
    unet = build_module(path.name, "U-Net", lambda: UNet2DConditionModel.from_single_file(
        state_dict, subfolder="unet", **common))

    check_cancelled(cancelled)
    if vae:
        vae_model = load_vae_override(vae, config_dir, cancelled, status)
    else:
        say(status, "loading VAE…")
        vae_model = vae_from_state_dict(state_dict, path.name, common)

    check_cancelled(cancelled)
    say(status, "loading text encoder…")
    text_encoder = build_module(path.name, "text encoder",
                                lambda: _clip_from_state_dict(state_dict, config))
    del state_dict

    check_cancelled(cancelled)
    say(status, "loading tokenizer…")
    tokenizer = tokenizer_for(config_dir)
    return Parts(unet, vae_model, text_encoder, tokenizer)


def check_kind(path: Path, shapes: dict[str, tuple[int, ...]], wanted: str = "sd1",
               label: str = "SD 1.x") -> None:
    """Refuse, naming the file, anything but a standard checkpoint of the ``wanted`` kind."""
    kind = model_kind(shapes)
    if kind != wanted:
        raise ModelLoadError(KIND_ERRORS[kind].format(name=path.name))
    channels = unet_in_channels(shapes)
    if channels is not None and channels != 4:
        raise ModelLoadError(f"{path.name} is an inpainting or instruct-pix2pix model ({channels} "
                             f"input channels); LoRA Kiln trains standard {label} models only")


def check_base_model(path: Path, wanted: str = "sd1", label: str = "SD 1.x") -> None:
    """The checks that read no weights, for validation before a run: a cut-off or foreign
    file and the wrong kind of model are named on the field instead of minutes into loading.

    Reads a .safetensors header, a pickle's first bytes or a folder's JSON configs only; a
    .ckpt's tensor names need the whole pickle, so its kind is checked when it loads.
    """
    if path.is_dir():
        check_folder_layout(path)
        check_folder_family(path, wanted)
    elif path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                             f"{', '.join(SINGLE_FILE_SUFFIXES)} checkpoint or a diffusers folder")
    elif path.suffix.lower() == ".safetensors":
        check_kind(path, {k: shape for k, (_, shape) in read_safetensors_header(path).items()}, wanted, label)
    else:
        check_pickle_format(path)


def _clip_from_state_dict(state_dict: dict[str, Any], config: str) -> CLIPTextModel:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    # The same conversion StableDiffusionPipeline.from_single_file uses (it knows that
    # transformers 5 flattened CLIPTextModel's "text_model." level).
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModel, state_dict, subfolder="text_encoder", config=config, local_files_only=True)


def vae_from_state_dict(state_dict: dict[str, Any], name: str,
                         common: dict[str, Any]) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return build_module(name, "VAE", lambda: AutoencoderKL.from_single_file(
        state_dict, subfolder="vae", **common))


# --- VAE override ---------------------------------------------------------------------------


def load_vae_override(spec: str, config_dir: Path, cancelled: Cancelled,
                      status: Status) -> AutoencoderKL:
    import torch

    check_cancelled(cancelled)
    path = Path(spec).expanduser()
    say(status, f"loading VAE {path.name}…")
    if not path.exists():
        raise ModelLoadError(f"the VAE {spec} does not exist; check the path or clear the "
                             "VAE override")
    if path.is_dir():
        from diffusers import AutoencoderKL

        subfolder = None if (path / "config.json").is_file() else "vae"
        if subfolder and not (path / "vae" / "config.json").is_file():
            raise ModelLoadError(f"{path.name} is not a diffusers VAE folder (no config.json); "
                                 "choose a VAE file or folder")
        return build_module(path.name, "VAE", lambda: AutoencoderKL.from_pretrained(
            str(path), subfolder=subfolder, local_files_only=True, torch_dtype=torch.float32,
            **variant(path / (subfolder or ""))))
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{path.name} is not a VAE file LoRA Kiln can read; choose a "
                             ".safetensors or .ckpt VAE")
    is_safetensors = path.suffix.lower() == ".safetensors"
    state_dict = load_safetensors(path) if is_safetensors else load_pickled(path)
    # A standalone VAE (original or diffusers layout) or a full checkpoint, whose VAE is used.
    if not any(k.split(".")[0] == "decoder" or k.startswith(("first_stage_model.decoder.",
                                                             "vae.decoder.")) for k in state_dict):
        raise ModelLoadError(f"{path.name} does not look like a VAE (it has no decoder weights); "
                             "choose a VAE file or clear the VAE override")
    common = {"config": str(config_dir), "local_files_only": True}
    return vae_from_state_dict(state_dict, path.name, common)


# --- diffusers folders ----------------------------------------------------------------------


def load_folder(folder: Path, vae: str, config_dir: Path, cancelled: Cancelled,
                status: Status) -> Parts:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    check_folder_layout(folder)
    check_folder_family(folder)
    for part in ("unet", "text_encoder") + (() if vae else ("vae",)):
        if not (folder / part / "config.json").is_file():
            raise ModelLoadError(f"{folder.name} has no {part}/config.json; the model folder is "
                                 "incomplete, copy or download it again")
    check_cancelled(cancelled)
    say(status, "loading U-Net…")
    unet = build_module(folder.name, "U-Net", lambda: UNet2DConditionModel.from_pretrained(
        str(folder), subfolder="unet", local_files_only=True, torch_dtype=torch.float32,
        **variant(folder / "unet")))
    check_cancelled(cancelled)
    if vae:
        vae_model = load_vae_override(vae, config_dir, cancelled, status)
    else:
        say(status, "loading VAE…")
        vae_model = build_module(folder.name, "VAE", lambda: AutoencoderKL.from_pretrained(
            str(folder), subfolder="vae", local_files_only=True, torch_dtype=torch.float32,
            **variant(folder / "vae")))
    check_cancelled(cancelled)
    say(status, "loading text encoder…")
    text_encoder = build_module(folder.name, "text encoder", lambda: CLIPTextModel.from_pretrained(
        str(folder / "text_encoder"), local_files_only=True, dtype=torch.float32,
        **variant(folder / "text_encoder")))
    check_cancelled(cancelled)
    say(status, "loading tokenizer…")
    tokenizer = tokenizer_for(folder)
    return Parts(unet, vae_model, text_encoder, tokenizer)


def check_folder_layout(folder: Path) -> None:
    if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
        raise ModelLoadError(f"{folder.name} is a folder but not a diffusers model (no "
                             "model_index.json or unet folder); choose a model file or folder")


def check_folder_family(folder: Path, wanted: str = "sd1") -> None:
    """Refuse a folder of another kind than ``wanted``; one without configs is left to the
    loader, which names the config it lacks."""
    kind = folder_kind(folder)
    if kind not in (wanted, "unknown"):
        raise ModelLoadError(KIND_ERRORS[kind].format(name=folder.name))


def variant(component_dir: Path) -> dict[str, str]:
    """Ask for the fp16 variant when a folder only has ``*.fp16.*`` weights (common downloads)."""
    names = [p.name for p in component_dir.glob("*") if p.suffix in (".safetensors", ".bin")]
    if names and all(".fp16." in name for name in names):
        return {"variant": "fp16"}
    return {}


# --- shared ----------------------------------------------------------------------------------


def build_module(name: str, what: str, make: Callable[[], Any], model: str = "SD 1.x") -> Any:
    """Run a loader; turn its failures and any weight it left unset into a ModelLoadError."""
    try:
        module = make()
    except ModelLoadError:
        raise
    except (ValueError, RuntimeError, OSError, KeyError, TypeError) as error:
        text = " ".join(str(error).split())
        if "expected shape" in text:  # diffusers: "Cannot load <x> because <key> expected shape…"
            detail = text.partition(" because ")[2].partition(". ")[0] or text[:200]
            raise ModelLoadError(f"{name}: its {what} does not have the shapes of the {model} "
                                 f"model it is built as ({detail}); choose an {model} model"
                                 ) from error
        if "meta tensor" in text:  # accelerate could not move the weights the file lacks
            raise ModelLoadError(f"{name} lacks some weights of its {what}; the file is "
                                 f"incomplete or not an {model} model") from error
        detail = text[:200] or type(error).__name__
        raise ModelLoadError(f"{name}: its {what} could not be loaded ({detail}); it may not be "
                             f"an {model} model, or it is damaged") from error
    # Loaders that build on the meta device leave weights the file lacks there, silently.
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    missing = [tensor_name for tensor_name, tensor in tensors if tensor.is_meta]
    if missing:
        raise ModelLoadError(f"{name} has no weights for {len(missing)} tensors of its {what} "
                             f"(e.g. {missing[0]}); the file is incomplete or not an {model} model")
    return module


def tokenizer_for(folder: Path) -> CLIPTokenizer:
    candidate = folder / "tokenizer"
    if (candidate / "vocab.json").is_file() and (candidate / "merges.txt").is_file():
        return load_tokenizer(candidate)
    return load_tokenizer()


def check_cancelled(cancelled: Cancelled) -> None:
    if cancelled is not None and cancelled():
        raise ModelLoadCancelled("model loading cancelled")


def say(status: Status, text: str) -> None:
    if status is not None:
        status(text)
