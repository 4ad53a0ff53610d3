"""What a loaded base model is: its modules, tokenizer and training noise schedule
(:class:`SDComponents`). The loaders and the demo model build one; nothing here loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class SDComponents:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler  # the training schedule (see training_scheduler)
    vae_scale_factor: float
    source: str  # for people: "demo model", a file name, a folder name
    is_demo: bool


def training_scheduler(v_parameterization: bool = False) -> DDPMScheduler:
    """sd-scripts' training scheduler: the SD 1.x betas, whatever a model folder says."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, clip_sample=False,
                         prediction_type="v_prediction" if v_parameterization else "epsilon")
