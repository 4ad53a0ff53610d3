"""Loading the base model to train on: a single-file checkpoint, a diffusers folder or the demo.

The family that claims the model (core.models.family) loads it. Everything is offline:
SD 1.x single files are built from the shipped SD 1.5 configs (resources/sd15) and folders
with ``local_files_only``. What a file holds is checked from
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
from core.models.checkpoint_files import (
    SINGLE_FILE_SUFFIXES,
    ModelLoadCancelled,
    ModelLoadError,
    inspect_checkpoint,
)
from core.models.components import ModelComponents, training_scheduler
from core.models.family import Cancelled, Status, family_for


__all__ = ["ModelComponents", "ModelLoadError", "ModelLoadCancelled", "load_base_model",
           "build_demo_model", "inspect_checkpoint", "training_scheduler"]


def build_demo_model(seed: int = 0, *, v_parameterization: bool = False) -> ModelComponents:
    """The SD 1.x architecture at toy size, deterministic from ``seed`` (see core.models.demo)."""
    from core.models.sd1 import FAMILY

    _silence_harmless_messages()
    return FAMILY.build_demo(seed, v_parameterization=v_parameterization)


def load_base_model(spec: str, *, family: str = "auto", vae: str = "", v_parameterization: bool = False,
                    cancelled: Cancelled = None, status: Status = None,
                    config_dir: Path | None = None) -> ModelComponents:
    """Load ``spec``: a built-in model (DEMO_MODEL), a diffusers folder, or a
    .safetensors/.ckpt/.pt file, as the family that claims it or ``family`` (the
    model.family setting; "auto" reads it from the file) loads it.

    ``vae`` replaces the model's VAE (a file in either layout, or a diffusers folder).
    ``config_dir`` is the weightless config folder single files are built from (default:
    the family's shipped one). Raises ModelLoadError with a message for people, and
    ModelLoadCancelled when ``cancelled()`` turns True between components.
    """
    from core.models.family import UnsupportedFamily, built_in_models
    from core.models.libraries import load_model_libraries

    load_model_libraries()  # before any model code: another thread may be importing them

    _silence_harmless_messages()
    spec = spec.strip()
    if not spec:
        raise ModelLoadError("no base model chosen: pick a .safetensors or .ckpt file, a "
                             f"diffusers folder, or {DEMO_MODEL}")
    try:
        chosen = family_for(spec, family)
    except UnsupportedFamily as error:
        raise ModelLoadError(str(error)) from None
    if not chosen.claims(spec):
        if spec.startswith("builtin:"):
            raise ModelLoadError(f"{spec} is not a built-in model; the built-in ones are "
                                 + ", ".join(built_in_models()))
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelLoadError(f"{spec} does not exist; check the path or choose another base model")
        if not path.is_dir() and path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{path.name} is not a model file LoRA Kiln can read; choose a "
                                 ".safetensors or .ckpt checkpoint or a diffusers folder")
    options = {"config_dir": config_dir} if config_dir is not None else {}
    return chosen.load(spec, vae=vae, v_parameterization=v_parameterization, cancelled=cancelled,
                       status=status, **options)


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
