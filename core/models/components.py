"""What a loaded base model is: its modules, tokenizers and training noise schedule
(:class:`ModelComponents`). A family's loader and its demo model build one; nothing here loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from torch import nn


@dataclass
class ModelComponents:
    family: str  # the name of the core.models.family.Family that built it
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    # The family's text encoders and their tokenizers, by component name ("text_encoder", and
    # for two-encoder families "text_encoder_2"), in the family's order.
    text_encoders: dict[str, nn.Module]
    tokenizers: dict[str, Any]
    noise_scheduler: DDPMScheduler  # the training schedule (see training_scheduler)
    vae_scale_factor: float
    source: str  # for people: "demo model", a file name, a folder name
    is_demo: bool

    def denoisers(self) -> dict[str, nn.Module]:
        """The components LoRA can train, by name: the U-Net, then each text encoder."""
        return {"unet": self.unet, **self.text_encoders}


def training_scheduler(v_parameterization: bool = False) -> DDPMScheduler:
    """sd-scripts' training scheduler (SD 1.x and SDXL share it): the scaled-linear betas,
    whatever a model folder says."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False,
                         prediction_type="v_prediction" if v_parameterization else "epsilon")
