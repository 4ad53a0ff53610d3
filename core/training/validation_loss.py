"""The validation loss: the mean loss on images never trained on, at fixed timesteps and noise.

The training loss is noisy by nature: each step draws its own images, timesteps and noise. The
validation loss takes all of those out of the comparison, so the curve moves only when the LoRA
does, step to step and run to run (what sd-scripts' validation aims at with its fixed timesteps
and validation seed):

- the held-out images' latents are encoded once, from the VAE's mean (no sampling noise), at the
  planned centre crop and never flipped;
- each image is noised at the same spread of timesteps (:func:`fixed_timesteps`) with noise drawn
  from a generator seeded by the validation seed at every evaluation;
- the loss is the plain mean squared error against the family's target, without the training's
  weightings (min-SNR, debiased estimation, prior loss), so runs that differ in those compare;
- it runs under ``torch.no_grad`` in eval mode (no dropout), and leaves every random generator as
  it found it, so a run's training is the same with validation on or off.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch

from core.config.schema import TrainConfig
from core.data.dataset_plan import DatasetPlan, PlanImage
from core.data.pipeline import Batch
from core.data.samples import Sample, load_pixels
from core.data.size_conditioning import training_time_ids
from core.training import placement

TIMESTEP_COUNT = 4  # sd-scripts' count: 200, 400, 600, 800 of 1000


def fixed_timesteps(num_train_timesteps: int, count: int = TIMESTEP_COUNT) -> list[int]:
    """``count`` timesteps evenly inside the schedule, both ends left out (sd-scripts' choice:
    its validation takes the inner points of ``linspace(0, T, count + 2)``, so a curve here
    and one from sd-scripts are measured at the same timesteps)."""
    return [i * num_train_timesteps // (count + 1) for i in range(1, count + 1)]


def validation_batches(images: list[PlanImage], batch_size: int, max_batches: int = 0) -> list[list[PlanImage]]:
    """The held-out images in fixed batches: by bucket (batches never mix buckets), each bucket
    in path order; at most ``max_batches`` of them when that is set."""
    by_bucket: dict[tuple[int, int], list[PlanImage]] = {}
    for image in sorted(images, key=lambda i: str(i.record.path)):
        by_bucket.setdefault(image.bucket, []).append(image)
    batches = [members[start:start + batch_size] for _bucket, members in sorted(by_bucket.items())
               for start in range(0, len(members), batch_size)]
    return batches[:max_batches] if max_batches else batches


@contextmanager
def evaluation_mode(models: list[torch.nn.Module]) -> Iterator[None]:
    """Every module in eval mode (no dropout) and the random generators untouched, for the block;
    each module's own mode is restored afterwards (a frozen part of a trained model stays eval)."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


class ValidationLoss:
    """Evaluates one run's validation set; ``computer`` is the run's step.StepComputer."""

    def __init__(self, config: TrainConfig, plan: DatasetPlan, computer, seed: int) -> None:  # noqa: ANN001
        self.computer = computer
        self.seed = seed
        self.batches = validation_batches(plan.validation, config.training.batch_size,
                                          config.training.max_validation_steps)
        self.image_count = sum(len(batch) for batch in self.batches)
        options = plan.subsets[0].params
        self._samples = [[Sample(str(i.record.path), i.record, i.assignment, options, 1.0) for i in batch]
                         for batch in self.batches]
        self.timesteps = fixed_timesteps(computer.c.noise_scheduler.config.num_train_timesteps)
        self._latents: list[torch.Tensor] = []  # per batch, on the CPU

    @property
    def captions(self) -> list[str]:
        """Every caption of the validation set (for a text-encoder output cache)."""
        return [sample.record.caption for batch in self._samples for sample in batch]

    @torch.no_grad()
    def encode(self) -> None:
        """The held-out images' latents, once: the VAE's mean, scaled as training scales them."""
        c, device = self.computer.c, self.computer.device
        with placement.on_device(c.vae, device):
            dtype = placement.module_dtype(c.vae)
            for batch in self._samples:
                pixels = torch.stack([load_pixels(sample, None, False) for sample in batch])
                mean = c.vae.encode(pixels.to(device, dtype)).latent_dist.mean.float()
                self._latents.append((mean * c.vae_scale_factor).cpu())

    def evaluate(self, models: list[torch.nn.Module]) -> float:
        """The mean loss over the validation set and the fixed timesteps; ``models`` are the
        trained modules (put in eval mode for the call)."""
        if not self._latents:
            self.encode()
        computer = self.computer
        generator = torch.Generator().manual_seed(self.seed)
        total, count = 0.0, 0
        with evaluation_mode(models + [computer.unet, *computer.text_encoders.values()]):
            for samples, latents in zip(self._samples, self._latents):
                latents = latents.to(computer.device)
                batch = self._batch(samples, latents)
                with computer.autocast():
                    text = self._text(batch.captions)
                for timestep in self.timesteps:
                    noise = torch.randn(latents.shape, generator=generator).to(computer.device)
                    loss = self._loss(batch, latents, noise, timestep, text)
                    total += float(loss.sum())
                    count += loss.numel()
        return total / count if count else math.nan

    def _batch(self, samples: list[Sample], latents: torch.Tensor) -> Batch:
        target = (latents.shape[-1] * 8, latents.shape[-2] * 8)
        ids = [training_time_ids(s.record.size, s.assignment.bucket, False, target) for s in samples]
        return Batch(bucket=samples[0].assignment.bucket, keys=[s.key for s in samples],
                     captions=[s.record.caption for s in samples], loss_weights=torch.ones(len(samples)),
                     pixels=None, latents=latents, flipped=[False] * len(samples),
                     size_conditioning=torch.tensor(ids, dtype=torch.float32))

    def _text(self, captions: list[str]):  # noqa: ANN202 - family.TextConditioning
        computer = self.computer
        if computer.text_cache is not None:
            return computer.text_cache.conditioning(captions, computer.device)
        training = computer.config.training
        return computer.family.encode_text(computer.c, computer.text_encoders, captions,
                                           clip_skip=computer.config.model.clip_skip,
                                           max_token_length=training.max_token_length, device=computer.device)

    def _loss(self, batch: Batch, latents: torch.Tensor, noise: torch.Tensor, timestep: int,
              text) -> torch.Tensor:  # noqa: ANN001
        """Each image's mean squared error at ``timestep``: a [B] tensor."""
        computer = self.computer
        scheduler = computer.c.noise_scheduler
        timesteps = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=computer.device)
        with computer.autocast():
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = computer.unet(noisy, timesteps, **computer.family.unet_inputs(text, batch)).sample
        target = scheduler.get_velocity(latents, noise, timesteps) if computer.v_prediction else noise
        return (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))


def for_run(config: TrainConfig, plan: DatasetPlan, computer) -> ValidationLoss | None:  # noqa: ANN001
    """The run's validation loss, or None when it holds no images out."""
    from core.data.validation_split import validation_seed

    if not plan.validation:
        return None
    return ValidationLoss(config, plan, computer, validation_seed(config.dataset.validation_seed,
                                                                  config.training.seed))
