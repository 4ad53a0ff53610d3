"""Reading single-file checkpoints safely, and telling what kind of model a file holds.

What a file is comes from its tensor names and shapes only. For .safetensors that is the
JSON header, so a 4 GB model is classified without reading its weights. A .ckpt is a
pickle: it is opened with ``weights_only=True`` (no code runs) and memory-mapped where the
format allows, so only the small pickle is read, not the tensors.

Old training checkpoints pickle more than weights (a Lightning ``ModelCheckpoint``
callback, numpy scalars). Those objects are replaced with inert stand-ins instead of being
imported, so such a file still loads and still runs no code. What torch's weights-only
loader blocks outright (os, subprocess and the like: a file built to run code) is refused.
"""

from __future__ import annotations

import json
import struct
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# The safetensors format caps its header at 100 MB; a bigger length means "not safetensors".
_MAX_HEADER = 100 * 1024 * 1024

_UNET = "model.diffusion_model."
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_CLIP_PREFIX = "cond_stage_model.transformer."
_CLIP_TEXT_MODEL = _CLIP_PREFIX + "text_model."
_LORA_MARKERS = (".lora_down.weight", ".lora_up.weight", "lora_A", "lora_B", ".hada_w1_a", ".lokr_w1")


class ModelLoadError(ValueError):
    """A base model or VAE cannot be used; the message names the file and what to do."""


class ModelLoadCancelled(Exception):
    """The caller's ``cancelled()`` returned True between two components."""


def damaged(path: Path, detail: str) -> ModelLoadError:
    return ModelLoadError(f"{path.name} is damaged or incomplete ({detail}); download it again")


# --- safetensors -------------------------------------------------------------------------


def read_safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (dtype, shape) from the header alone, after checking it fits the file."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise damaged(path, f"only {size} bytes, too short for a .safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_HEADER or header_len > size - 8:
            raise damaged(path, "its header is cut off, or it is not a .safetensors file at all")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged(path, "its header is not valid, or it is not a .safetensors file "
                            "at all") from None
    if not isinstance(header, dict):
        raise damaged(path, "its header is not valid")
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shapes[name] = (str(dtype), tuple(int(n) for n in shape))
            data_end = max(data_end, int(end), int(begin))
        except (TypeError, KeyError, ValueError):
            raise damaged(path, f"its header entry for {name!r} is not valid") from None
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise damaged(path, f"{missing:,} bytes of tensor data are missing at the end")
    return shapes


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    read_safetensors_header(path)  # a clear message for a cut-off file before the loader's own
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own exception types; all mean "bad file"
        raise damaged(path, f"{type(error).__name__}: {error}") from None


# --- .ckpt / .pt ---------------------------------------------------------------------------


def load_pickled(path: Path) -> dict[str, Any]:
    """Load a torch.save'd checkpoint without running code; the 'state_dict' level removed."""
    import pickle

    import torch

    is_zip = check_pickle_format(path)
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            if not is_zip:
                raise
            # Foreign objects next to the weights: load again with inert stand-ins for them.
            with torch.serialization.safe_globals(_stand_ins(path)):
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"{path.name} holds Python objects besides weights that cannot be loaded safely "
            f"({_unpickling_detail(error)}); use a .safetensors version of this model") from None
    except Exception as error:  # zip, pickle and storage errors all mean a broken file here
        first_line = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise damaged(path, first_line) from None
    # Lightning and LDM training scripts nest the weights under "state_dict".
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} is a PyTorch file but holds no model weights")
    return data


def _unpickling_detail(error: Exception) -> str:
    """torch's message starts with advice to load unsafely; keep only the line naming the object."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    return (named or lines or [type(error).__name__])[0][:160]


def _stand_ins(path: Path) -> list[tuple[type, str]]:
    import torch

    stand_ins: list[tuple[type, str]] = []
    for full_name in torch.serialization.get_unsafe_globals_in_checkpoint(path):
        _, _, name = full_name.rpartition(".")
        # Accepts any constructor arguments and state and keeps none of them: nothing runs.
        stand_in = type(name or "StandIn", (), {
            "__init__": lambda self, *args, **kwargs: None,
            "__setstate__": lambda self, state: None,
        })
        stand_ins.append((stand_in, full_name))
    return stand_ins


def check_pickle_format(path: Path) -> bool:
    """Raise ModelLoadError unless ``path`` looks like a torch.save file; True for the zip format.

    Reads a few bytes only, so validation can name a renamed text file before training."""
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and _is_not_a_pickle(path):
        raise damaged(path, "it is not a PyTorch checkpoint")
    return is_zip


def _is_not_a_pickle(path: Path) -> bool:
    """Legacy (pre-zip) torch files start with a pickle protocol opcode (0x80)."""
    with path.open("rb") as handle:
        first = handle.read(1)
    return first != b"\x80"


# --- detection ----------------------------------------------------------------------------


def read_key_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name with its shape; tensor data is not read (header / mmap only)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return {name: shape for name, (_, shape) in read_safetensors_header(path).items()}
    data = load_pickled(path)
    return {str(name): tuple(value.shape) for name, value in data.items()
            if hasattr(value, "shape")}


def classify_keys(shapes: dict[str, tuple[int, ...]]) -> str:
    """'sd1', 'sd2', 'sdxl', 'lora' or 'unknown', from tensor names and shapes."""
    keys = shapes.keys()
    model_prefixes = (_UNET, "cond_stage_model.", "conditioner.") + _VAE_PREFIXES
    has_full_weights = any(k.startswith(model_prefixes) for k in keys)
    if not has_full_weights and any(marker in k for k in keys for marker in _LORA_MARKERS):
        return "lora"
    sdxl_keys = (_UNET + "label_emb.0.0.weight", "add_embedding.linear_1.weight")
    if any(k.startswith("conditioner.embedders.") for k in keys) or any(k in shapes for k in sdxl_keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"  # OpenCLIP ViT-H text encoder
    context_dims = {shape[1] for k, shape in shapes.items()
                    if k.startswith(_UNET) and k.endswith("attn2.to_k.weight") and len(shape) == 2}
    if 1024 in context_dims:
        return "sd2"
    has_clip = any(k.startswith(_CLIP_PREFIX) for k in keys)
    if _UNET + "input_blocks.0.0.weight" in shapes and has_clip:
        return "sd1"
    return "unknown"


# Tensor names only the transformer families have (SAI single files, Black Forest Labs' and
# diffusers' layouts): SD3's MMDiT joint blocks, Flux's double and single stream blocks.
_SD3_MARKERS = ("joint_blocks.", "context_embedder.", "text_encoders.t5xxl.")
_FLUX_MARKERS = ("double_blocks.", "single_blocks.", "single_transformer_blocks.")
# Addition-embedding input width of the SDXL refiner: pooled 1280 + 5 time ids x 256
# (it adds an aesthetic score to size and crop); the base takes 1280 + 6 x 256 = 2816.
_REFINER_ADM_WIDTH = 2560
_SDXL_CONTEXT = 2048


def model_kind(shapes: dict[str, tuple[int, ...]]) -> str:
    """classify_keys, told finer for the files that must be refused with their name: also
    'sdxl_refiner', 'sd3', 'flux' and 'sdxl_lora' (a LoRA of SDXL)."""
    kind = classify_keys(shapes)
    keys = shapes.keys()
    if kind == "lora":
        return "sdxl_lora" if _is_sdxl_lora(shapes) else "lora"
    if any(marker in k for k in keys for marker in _SD3_MARKERS):
        return "sd3"
    if any(marker in k for k in keys for marker in _FLUX_MARKERS):
        return "flux"
    if kind == "sdxl":
        adm = shapes.get(_UNET + "label_emb.0.0.weight")
        only_open_clip = any(k.startswith("conditioner.embedders.0.model.") for k in keys)
        if only_open_clip or (adm is not None and len(adm) == 2 and adm[1] == _REFINER_ADM_WIDTH):
            return "sdxl_refiner"
    return kind


def _is_sdxl_lora(shapes: dict[str, tuple[int, ...]]) -> bool:
    """Kohya's lora_te1_/lora_te2_ prefixes, diffusers' text_encoder_2, or a cross-attention
    key projection that reads SDXL's 2048-wide context."""
    for key, shape in shapes.items():
        if key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.", "te2.")):
            return True
        if ("attn2_to_k" in key or "attn2.to_k" in key) and ("lora_down" in key or "lora_A" in key) \
                and len(shape) == 2 and shape[1] == _SDXL_CONTEXT:
            return True
    return False


def folder_kind(folder: Path) -> str:
    """model_kind for a diffusers folder, from model_index.json and unet/config.json only."""
    index, unet = _json(folder / "model_index.json"), _json(folder / "unet" / "config.json")
    pipeline = str(index.get("_class_name", ""))
    if "StableDiffusion3" in pipeline:
        return "sd3"
    if "Flux" in pipeline:
        return "flux"
    refiner_index = index.get("requires_aesthetics_score") is True or (
        "text_encoder_2" in index and (index.get("text_encoder") or [None])[0] is None)
    if "XL" in pipeline or unet.get("addition_embed_type") == "text_time":
        refiner_unet = unet.get("projection_class_embeddings_input_dim") == _REFINER_ADM_WIDTH
        return "sdxl_refiner" if refiner_index or refiner_unet else "sdxl"
    if unet.get("cross_attention_dim") == 1024:
        return "sd2"
    if unet or (folder / "unet").is_dir():
        return "sd1"
    return "unknown"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kind_of_path(spec: str) -> str | None:
    """model_kind of a model file or folder, or None when it cannot be told (missing,
    unreadable, damaged, not a model file): the loader says why then. Cached per file size
    and time, so the settings form, which asks after every edit, reads a header once."""
    path = Path(spec.strip()).expanduser()
    if not spec.strip():
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return _kind_of_path(str(path.resolve()), path.is_dir(), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=64)
def _kind_of_path(path: str, is_dir: bool, size: int, mtime_ns: int) -> str | None:
    if is_dir:
        return folder_kind(Path(path))
    if Path(path).suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return None
    try:
        return model_kind(read_key_shapes(path))
    except (ModelLoadError, OSError):
        return None


def inspect_checkpoint(path: str | Path) -> str:
    """'sd1', 'sd2', 'sdxl', 'lora' or 'unknown' for a .safetensors / .ckpt / .pt file.

    Raises ModelLoadError for a file that cannot be read (cut short, not a model file).
    """
    return classify_keys(read_key_shapes(path))


def unet_in_channels(shapes: dict[str, tuple[int, ...]]) -> int | None:
    shape = shapes.get(_UNET + "input_blocks.0.0.weight")
    return shape[1] if shape and len(shape) == 4 else None


def has_vae_weights(shapes: dict[str, tuple[int, ...]]) -> bool:
    return any(k.startswith(p + "decoder.") for k in shapes for p in _VAE_PREFIXES)


def normalise_clip_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Some early SD 1.x files lack the ``text_model.`` level under the CLIP prefix: add it.

    diffusers' converter only recognises the text encoder by its ``text_model.`` keys.
    """
    if any(k.startswith(_CLIP_TEXT_MODEL) for k in state_dict):
        return state_dict
    renamed: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.startswith(_CLIP_PREFIX):
            key = _CLIP_TEXT_MODEL + key[len(_CLIP_PREFIX):]
        renamed[key] = value
    return renamed
