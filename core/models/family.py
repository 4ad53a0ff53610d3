"""The model-family seam: what differs between SD 1.x, SDXL and later families.

A family is one object (see :class:`Family`) that knows how to load its models offline,
turn captions into the conditioning its U-Net takes, which modules get LoRA and what
Kohya calls them, what a LoRA file of it says about itself, its default resolution and
bucket step, and how to draw a sample. The engine, the data pipeline, the Kohya format
and the studies ask the family; none of them tests which family it is.

Families are found by name (the ``model.family`` setting), or with the setting "auto" from
the base model: a built-in model name (``builtin:demo``) is claimed by its family, and a file
or folder is of the family whose name its tensors or configs tell
(core.models.checkpoint_files.model_kind); an explicit setting must agree with both. The
built-in ones are listed in :data:`BUILT_IN` and
imported on first use; :func:`register` adds one more (a test's toy family, a plugin).
Adding a family is adding one module that defines ``FAMILY`` and naming it in BUILT_IN.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pathlib import Path

    import torch
    from PIL import Image
    from torch import nn

    from core.config.prompts import SamplePrompt
    from core.config.schema import NetworkParams, TrainConfig
    from core.models.blocks import UnetBlocks
    from core.models.components import ModelComponents

# Module path -> (rank, alpha): the LoRA a family puts on one component.
Targets = dict[str, tuple[int, float]]
Cancelled = Callable[[], bool] | None
Status = Callable[[str], None] | None

# The modules that name families, imported when a family is first looked up (so importing
# core stays cheap). Each defines FAMILY, an object that satisfies Family.
BUILT_IN: tuple[str, ...] = ("core.models.sd1", "core.models.sdxl")
# The model.family setting that takes the family from the base model itself.
AUTO = "auto"


@dataclass(frozen=True)
class TextConditioning:
    """What the text encoders give the U-Net for a batch of captions.

    ``states`` is (batch, tokens, width): the sequence the U-Net attends to. ``pooled`` is
    (batch, width) for families whose U-Net also takes a pooled text embedding (SDXL), else
    None. Rows are captions, so a cache can keep one row per caption.
    """

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> TextConditioning:
        import torch

        # Asynchronous only towards a GPU: a copy back to the host must be complete before
        # anyone reads it.
        non_blocking = torch.device(device).type == "cuda"
        pooled = None if self.pooled is None else self.pooled.to(device, non_blocking=non_blocking)
        return TextConditioning(self.states.to(device, non_blocking=non_blocking), pooled)

    def rows(self) -> list[TextConditioning]:
        """One conditioning per caption, each with its own storage (not a view of the batch)."""
        pooled = [None] * len(self.states) if self.pooled is None else list(self.pooled)
        return [TextConditioning(s.clone(), None if p is None else p.clone()) for s, p in zip(self.states, pooled)]

    @staticmethod
    def stack(rows: Sequence[TextConditioning]) -> TextConditioning:
        import torch

        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return TextConditioning(torch.stack([r.states for r in rows]), pooled)


class Family(Protocol):
    """One model family. Attributes are constants of the family; methods never keep state."""

    name: str  # the model.family value that selects it: "sd1"
    label: str  # for people: "SD 1.x"
    lora_architecture: str  # what core.kohya.lora_format.describe_lora calls its LoRA files
    text_encoder_names: tuple[str, ...]  # component names, in the order Kohya numbers them
    default_resolution: int  # the side of the square training resolution presets start from
    bucket_step: int  # the default bucket resolution step (bucket_reso_steps)
    vae_fp16_unsafe: bool  # its VAE overflows in fp16: kept in fp32 when training in fp16
    clip_skip_applies: bool  # whether model.clip_skip changes its text encoding
    unet_blocks: UnetBlocks  # how per-block LoRA settings count its U-Net blocks (core.models.blocks)

    def claims(self, spec: str) -> bool:
        """Whether ``spec`` is a built-in model of this family (``builtin:demo``)."""
        ...

    def built_in_models(self) -> tuple[str, ...]:
        """The built-in model names this family claims."""
        ...

    def load(self, spec: str, *, vae: str = "", v_parameterization: bool = False,
             cancelled: Cancelled = None, status: Status = None) -> ModelComponents:
        """The components of ``spec`` (a file, a folder or a built-in name), offline, in float32
        on the CPU and in eval mode. Raises core.models.checkpoint_files.ModelLoadError."""
        ...

    def build_demo(self, seed: int = 0, *, v_parameterization: bool = False) -> ModelComponents:
        """The family's tiny built-in model, deterministic from ``seed``."""
        ...

    def config_dir(self) -> Path:
        """The family's shipped weightless configs (a diffusers folder without weights)."""
        ...

    def check_model_file(self, spec: str) -> None:
        """The checks that read no weights (a header, a folder's configs), for validation:
        raises ModelLoadError for a file of another kind or family."""
        ...

    def encode_text(self, components: ModelComponents, encoders: Mapping[str, nn.Module], captions: list[str], *,
                    clip_skip: int, max_token_length: int, device: torch.device) -> TextConditioning:
        """The captions' conditioning. ``encoders`` maps each of text_encoder_names to the module
        to call (under DDP the wrapper of a trained one). Call inside autocast."""
        ...

    def unet_inputs(self, text: TextConditioning, batch: Any) -> dict[str, Any]:
        """Keyword arguments of the U-Net call besides the noisy latents and timesteps, for a
        core.data.pipeline.Batch (SDXL: its size and crop conditioning)."""
        ...

    def lora_targets(self, component: str, module: nn.Module, network: NetworkParams) -> Targets:
        """The modules of one component ("unet" or a text encoder name) that get LoRA."""
        ...

    def lora_weights(self, network: NetworkParams) -> int:
        """How many LoRA weights ``network`` puts on the full-size model (for the size of its
        files), counted without loading one."""
        ...

    def kohya_name(self, component: str, module_path: str) -> str:
        """The Kohya module name (``lora_unet_...``, ``lora_te_...``) of a module path."""
        ...

    def lora_metadata(self, config: TrainConfig) -> dict[str, str]:
        """The family's own LoRA file metadata values: ss_base_model_version, ss_v2 and
        modelspec.architecture."""
        ...

    def generate(self, components: ModelComponents, prompt: SamplePrompt, *, clip_skip: int, device: torch.device,
                 dtype: torch.dtype, max_token_length: int) -> Image.Image:
        """One sample image with the weights as they are (LoRA included), deterministic for
        the prompt's seed."""
        ...


class UnsupportedFamily(ValueError):
    """A model family LoRA Kiln cannot train (yet); the message says which and what to do."""


_REGISTERED: dict[str, Family] = {}
_LOADED_BUILT_INS = False


def register(family: Family) -> Family:
    """Make ``family`` findable by its name and its built-in models; returns it."""
    _REGISTERED[family.name] = family
    return family


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


def families() -> list[Family]:
    global _LOADED_BUILT_INS
    if not _LOADED_BUILT_INS:
        for module in BUILT_IN:
            family = importlib.import_module(module).FAMILY
            _REGISTERED.setdefault(family.name, family)
        _LOADED_BUILT_INS = True
    return list(_REGISTERED.values())


def family_named(name: str) -> Family:
    """The family whose model.family value is ``name``; UnsupportedFamily for any other."""
    for family in families():
        if family.name == str(name):
            return family
    labels = {"sd2": "SD 2.x"}
    trainable = " and ".join(f.label for f in families())
    raise UnsupportedFamily(f"{labels.get(str(name), str(name))} is not supported yet; LoRA Kiln trains "
                            f"{trainable}")


def family_for(base_model: str, family_setting: str) -> Family:
    """The family of a run. With the setting "auto": the family that claims the built-in
    model, else the one the file or folder is of, else the first built-in family (SD 1.x), whose
    loader then says what the file is. With a family's name: that family, which must also be
    the base model's (UnsupportedFamily names the model, what it is and what to set)."""
    spec = base_model.strip()
    claimant = next((f for f in families() if f.claims(spec)), None)
    detected = None if claimant is not None else _detected_family(spec)
    if str(family_setting) == AUTO:
        return claimant or detected or families()[0]
    family = family_named(family_setting)
    if claimant is not None and claimant is not family:
        raise UnsupportedFamily(f"{spec} is a model of the {claimant.label} family, but model.family is "
                                f"{family.label}; set model.family to {claimant.name}")
    if detected is not None and detected is not family:
        from pathlib import Path

        raise UnsupportedFamily(f"{Path(spec).name} is an {detected.label} model, but model.family is "
                                f"{family.label}; set model.family to {detected.name} or {AUTO}")
    return family


def _detected_family(spec: str) -> Family | None:
    """The family named by what the file or folder at ``spec`` holds; None when it is none
    of theirs or cannot be read (the loader gives the reason then)."""
    if not spec:
        return None
    from core.models.checkpoint_files import kind_of_path

    kind = kind_of_path(spec)
    return next((f for f in families() if f.name == kind), None)


def built_in_models() -> tuple[str, ...]:
    return tuple(name for family in families() for name in family.built_in_models())


def resolution_defaults(family: Family) -> dict[str, Any]:
    """The dataset sizes a family starts from: its square resolution, and buckets from half to
    twice its side (SD 1.x: 512, 256-1024; SDXL: 1024, 512-2048)."""
    side = family.default_resolution
    return {"dataset.resolution": (side, side), "dataset.min_bucket_reso": side // 2,
            "dataset.max_bucket_reso": side * 2}


def moved_defaults(current: Mapping[str, Any], old: Family, new: Family) -> dict[str, Any]:
    """When a project's model changes family: the sizes still at the old family's defaults,
    with the new family's values (a size the person chose stays as it is)."""
    before, after = resolution_defaults(old), resolution_defaults(new)
    return {path: after[path] for path, value in before.items() if tuple(_as_tuple(current.get(path))) ==
            tuple(_as_tuple(value)) and after[path] != value}


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)

