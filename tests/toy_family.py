"""A second model family for tests, in one module: the demo model under another name, with
LoRA on the U-Net's attention queries and values only and its own base-model version.

Importing this module is all it takes to plug it in (``register`` at the bottom): the
engine, the Kohya format, the metadata and validation find it by its name, "toy".
"""

from __future__ import annotations

from typing import Any

from core.config.schema import NetworkParams, TrainConfig
from core.models.family import Targets, register
from core.models.sd1 import SD1Family

TOY_MODEL = "builtin:toy"


class ToyFamily(SD1Family):
    name = "toy"
    label = "Toy"
    lora_architecture = "toy"
    default_resolution = 64
    bucket_step = 32

    def built_in_models(self) -> tuple[str, ...]:
        return (TOY_MODEL,)

    def load(self, spec: str, **options: Any):  # noqa: ANN201 - ModelComponents
        components = self.build_demo(7, v_parameterization=options.get("v_parameterization", False))
        components.family, components.source = self.name, "toy model"
        return components

    def lora_targets(self, component: str, module: Any, network: NetworkParams) -> Targets:
        every = super().lora_targets(component, module, network)
        if component != "unet":
            return {}
        return {path: spec for path, spec in every.items() if path.endswith(("attn1.to_q", "attn1.to_v"))}

    def lora_weights(self, network: NetworkParams) -> int:
        return network.dim * 1_000

    def lora_metadata(self, config: TrainConfig) -> dict[str, str]:
        return {"ss_base_model_version": "toy_v1", "ss_v2": "False", "modelspec.architecture": "toy/lora"}


FAMILY = register(ToyFamily())
