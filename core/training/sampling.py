"""Sample images during training, with the LoRA as it is at that moment."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL.PngImagePlugin import PngInfo

from core.system.atomic import write_bytes_atomic
from core.config.schema import Sampler
from core.config.prompts import SamplePrompt

_SCHEDULERS = {
    Sampler.DDIM: ("DDIMScheduler", {}),
    Sampler.EULER: ("EulerDiscreteScheduler", {}),
    Sampler.EULER_A: ("EulerAncestralDiscreteScheduler", {}),
    Sampler.DPMSOLVER_PP: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    Sampler.PNDM: ("PNDMScheduler", {"skip_prk_steps": True}),
    Sampler.LMS: ("LMSDiscreteScheduler", {}),
    Sampler.HEUN: ("HeunDiscreteScheduler", {}),
}


# SD 1.x's noise schedule, as its scheduler config sets it (steps_offset 1, no clipping).
_SD1_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
                 "set_alpha_to_one": False}


def make_scheduler(sampler: Sampler, prediction_type: str):  # noqa: ANN201 - a diffusers scheduler
    import inspect

    import diffusers

    name, extra = _SCHEDULERS[sampler]
    cls = getattr(diffusers, name)
    accepted = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in {**_SD1_SCHEDULE, **extra}.items() if k in accepted}
    return cls(prediction_type=prediction_type, **options)


def prompt_states(components, prompt: SamplePrompt, clip_skip: int,  # noqa: ANN001
                  max_token_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's and the negative prompt's states, encoded as training encodes captions
    (chunks of 75 tokens past 75), so a sample sees the same long prompt a caption would.
    The negative prompt gets the same length: classifier-free guidance pairs them."""
    from core.training.text import encode, tokenize

    device = next(components.text_encoder.parameters()).device
    ids = tokenize(components.tokenizer, [prompt.prompt, prompt.negative or ""], max_token_length)
    states = encode(components.text_encoder, ids.to(device), clip_skip)
    return states[:1], states[1:]


def generate(components, prompt: SamplePrompt, clip_skip: int, device: torch.device,  # noqa: ANN001
             dtype: torch.dtype, max_token_length: int = 75) -> "PIL.Image.Image":  # noqa: F821
    """One image from the current weights (LoRA included), deterministic for its seed."""
    from diffusers import StableDiffusionPipeline

    prediction = components.noise_scheduler.config.prediction_type
    pipe = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=make_scheduler(prompt.sampler, prediction),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(prompt.seed)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        # The prompts are encoded here, not by the pipeline, which would cut them at 77 tokens.
        positive, negative = prompt_states(components, prompt, clip_skip, max_token_length)
        result = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, width=prompt.width,
                      height=prompt.height, num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale,
                      generator=generator)
    return result.images[0]


def save_sample(image, folder: Path, name: str, prompt: SamplePrompt, step: int, epoch: int) -> Path:  # noqa: ANN001
    """PNG with the prompt and settings in its text chunks (as A1111-style tools read them)."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    settings = {"prompt": prompt.prompt, "negative_prompt": prompt.negative, "width": prompt.width,
                "height": prompt.height, "steps": prompt.steps, "cfg_scale": prompt.cfg_scale,
                "seed": prompt.seed, "sampler": prompt.sampler.value, "step": step, "epoch": epoch}
    info.add_text("lorakiln", json.dumps(settings))
    info.add_text("parameters", f"{prompt.prompt}\nNegative prompt: {prompt.negative}\nSteps: {prompt.steps}, "
                                f"Sampler: {prompt.sampler.value}, CFG scale: {prompt.cfg_scale}, Seed: {prompt.seed}, "
                                f"Size: {prompt.width}x{prompt.height}")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    path = folder / name
    write_bytes_atomic(path, buffer.getvalue())
    return path
