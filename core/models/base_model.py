"""Loading the base model to train on: a single-file checkpoint, a diffusers folder or the demo.

Everything is offline: single files are built from the shipped SD 1.5 configs
(resources/sd15) and folders with ``local_files_only``. What a file holds is checked from
its tensor names first, so an SDXL model, an SD 2.x model or a LoRA picked by mistake gets
a sentence saying so instead of a shape-mismatch trace (see core.models.loaders).

The modules come back in float32 on the CPU, in eval mode: the trainer decides precision,
device and which parts train. The noise scheduler is sd-scripts' training DDPM schedule,
not the model's sampling scheduler.

torch, diffusers and transformers are imported inside functions so that importing this
module (for ModelLoadError, inspect_checkpoint) stays cheap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.config.schema import DEMO_MODEL
from core.models.components import SDComponents, training_scheduler
from core.models.checkpoint_files import (
    SINGLE_FILE_SUFFIXES,
    ModelLoadCancelled,
    ModelLoadError,
    inspect_checkpoint,
)
from core.models.loaders import Cancelled, Parts, Status
from core.models.sd15_files import sd15_config_dir


__all__ = ["SDComponents", "ModelLoadError", "ModelLoadCancelled", "load_base_model",
           "build_demo_model", "inspect_checkpoint", "training_scheduler"]


def build_demo_model(seed: int = 0, *, v_parameterization: bool = False) -> SDComponents:
    """The SD 1.x architecture at toy size, deterministic from ``seed`` (see core.models.demo)."""
    from core.models import demo as models_demo
    _silence_harmless_messages()
    return models_demo.build_demo_model(seed, v_parameterization=v_parameterization)


def load_base_model(spec: str, *, vae: str = "", v_parameterization: bool = False,
                    cancelled: Cancelled = None, status: Status = None,
                    config_dir: Path | None = None) -> SDComponents:
    """Load ``spec``: DEMO_MODEL, a diffusers folder, or a .safetensors/.ckpt/.pt file.

    ``vae`` replaces the model's VAE (a file in either layout, or a diffusers folder).
    ``config_dir`` is the weightless config folder single files are built from (default:
    the shipped SD 1.5 one). Raises ModelLoadError with a message for people, and
    ModelLoadCancelled when ``cancelled()`` turns True between components.
    """
    from core.models import loaders as models_load
    _silence_harmless_messages()
    spec = spec.strip()
    configs = config_dir or sd15_config_dir()
    if not spec:
        raise ModelLoadError("no base model chosen: pick a .safetensors or .ckpt file, a "
                             f"diffusers folder, or {DEMO_MODEL}")
    if spec == DEMO_MODEL:
        components = build_demo_model(0, v_parameterization=v_parameterization)
        if vae:
            components.vae = models_load.load_vae_override(vae, configs, cancelled, status)
            components.vae_scale_factor = float(components.vae.config.scaling_factor)
        return components
    if spec.startswith("builtin:"):
        raise ModelLoadError(f"{spec} is not a built-in model; the only one is {DEMO_MODEL}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{spec} does not exist; check the path or choose another base model")
    if path.is_dir():
        parts = models_load.load_folder(path, vae, configs, cancelled, status)
    elif path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        parts = models_load.load_single_file(path, vae, configs, cancelled, status)
    else:
        raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                             ".safetensors or .ckpt checkpoint or a diffusers folder")
    return _assemble(parts, v_parameterization, path.name)


def _assemble(parts: Parts, v_parameterization: bool, source: str) -> SDComponents:
    import torch

    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(dtype=torch.float32)  # a no-op unless a folder held half-precision weights
        module.eval()
    return SDComponents(unet=parts.unet, vae=parts.vae, text_encoder=parts.text_encoder,
                        tokenizer=parts.tokenizer,
                        noise_scheduler=training_scheduler(v_parameterization),
                        vae_scale_factor=float(parts.vae.config.scaling_factor), source=source,
                        is_demo=False)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self._fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self._fragments)


_SILENCED = False


def _silence_harmless_messages() -> None:
    """Drop a few log lines that alarm users but mean nothing here, and only those."""
    global _SILENCED
    if _SILENCED:
        return
    _SILENCED = True
    # Without torchvision, transformers' CLIPImageProcessor uses its PIL twin: fine for us.
    logging.getLogger("transformers.utils.import_utils").addFilter(
        _DropMessages("requires torchvision (not installed); falling back"))
    # Real checkpoints carry EMA copies; like sd-scripts we train the live weights, so the
    # note that the EMA ones were skipped (and its advice about a script flag) is noise.
    logging.getLogger("diffusers.loaders.single_file_utils").addFilter(
        _DropMessages("only the non-EMA weights are extracted"))
    # Logged when a model with fp32-only modules is cast with .to(dtype); harmless here.
    logging.getLogger("diffusers.models.modeling_utils").addFilter(
        _DropMessages("should be kept in float32"))
