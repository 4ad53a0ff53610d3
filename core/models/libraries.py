"""The model libraries (diffusers, transformers, peft) imported once, one thread at a time.

diffusers and transformers hand out their classes through lazy modules that import a
submodule on first use. Two threads making that first use at once (the app's VRAM forecast
and a run started meanwhile, or a grid) can meet a submodule the other thread is still
running, and ``from diffusers import AutoencoderKL`` then fails with ImportError — seen
when Start was pressed while the first forecast was under way. Every entry point that may
run beside another calls :func:`load_model_libraries` before any model code: the first
caller imports everything the model code names while holding a lock, later callers wait
for it and then find it all imported.
"""

from __future__ import annotations

import importlib
import threading

# (module, names the model code takes from it): all of core's "from X import Y" of these libraries.
NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("diffusers", ("AutoencoderKL", "UNet2DConditionModel", "DDPMScheduler", "StableDiffusionPipeline",
                   "StableDiffusionXLPipeline", "DDIMScheduler", "EulerDiscreteScheduler",
                   "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler",
                   "LMSDiscreteScheduler", "HeunDiscreteScheduler")),
    ("diffusers.optimization", ("get_scheduler",)),
    ("diffusers.models.attention_processor", ("AttnProcessor",)),
    ("diffusers.loaders.single_file_utils", ("create_diffusers_clip_model_from_ldm",)),
    ("transformers", ("CLIPTextConfig", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer")),
    ("transformers.optimization", ("Adafactor",)),
    ("peft", ("LoraConfig", "inject_adapter_in_model")),
)

_LOCK = threading.RLock()
_loaded = False


def load_model_libraries() -> None:
    """Import every name of :data:`NAMES` (once per process; safe from any thread)."""
    global _loaded
    with _LOCK:
        if _loaded:
            return
        for module_name, names in NAMES:
            module = importlib.import_module(module_name)
            for name in names:
                getattr(module, name)  # a lazy module imports the name's submodule here
        _loaded = True


def imported(module_name: str, name: str) -> object:
    """``from module_name import name`` under the same lock, for code that needs one class
    without the rest (the tokenizers of the dataset scan's caption checks)."""
    with _LOCK:
        return getattr(importlib.import_module(module_name), name)
