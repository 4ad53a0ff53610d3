"""The sampling schedulers a sample prompt can name, built offline for a family's noise schedule."""

from __future__ import annotations

from typing import Any

from core.config.schema import Sampler

_SCHEDULERS = {
    Sampler.DDIM: ("DDIMScheduler", {}),
    Sampler.EULER: ("EulerDiscreteScheduler", {}),
    Sampler.EULER_A: ("EulerAncestralDiscreteScheduler", {}),
    Sampler.DPMSOLVER_PP: ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    Sampler.PNDM: ("PNDMScheduler", {"skip_prk_steps": True}),
    Sampler.LMS: ("LMSDiscreteScheduler", {}),
    Sampler.HEUN: ("HeunDiscreteScheduler", {}),
}

# The noise schedule of SD 1.x and SDXL, as their scheduler configs set it (steps_offset 1,
# no clipping).
SCALED_LINEAR_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                          "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
                          "set_alpha_to_one": False}


def make_scheduler(sampler: Sampler, prediction_type: str,
                   schedule: dict[str, Any] | None = None):  # noqa: ANN201 - a diffusers scheduler
    import inspect

    import diffusers

    name, extra = _SCHEDULERS[sampler]
    cls = getattr(diffusers, name)
    accepted = inspect.signature(cls.__init__).parameters
    options = {k: v for k, v in {**(schedule or SCALED_LINEAR_SCHEDULE), **extra}.items() if k in accepted}
    return cls(prediction_type=prediction_type, **options)
