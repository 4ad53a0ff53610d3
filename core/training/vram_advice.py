"""Does a run fit the GPU, and if not, the cheapest changes that would: each a set of field
assignments the GUI can apply, with the forecast of the config it makes.

"Cheapest" means least cost to the trained LoRA, in this fixed order (:data:`ORDER`):

1. gradient checkpointing on: the same result, about 30% slower;
2. the text encoders' outputs cached (when no encoder trains and captions never change):
   the same result, the encoders leave the GPU;
3. latents cached (when no image folder crops at random): the same result, the VAE leaves the GPU;
4. 8-bit AdamW instead of AdamW (when bitsandbytes is installed): nearly the same result;
5. fp8 base weights: the frozen weights in 8 bits (see :func:`_fp8_base_weights`);
6. batch size divided, gradient accumulation multiplied by the same factor: the same effective
   batch and optimizer steps, slower;
7. the U-Net trained alone instead of with the text encoder: changes *what* is trained, so it
   comes after every change that only costs time or precision;
8. the resolution one bucket step down: less detail learned, the last resort.

A change that does not apply (already on, not possible for this config, or one that would make
the config invalid) is left out. When no single change fits, the changes are combined in the
same order, one more at a time, until the combination fits.

Cards are measured as they are sold and as drivers show them: an "8 GB" card holds 8 GiB, so
the figures here are GiB written "GB" (:func:`gib`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config.optimizer_support import missing_package
from core.config.schema import LatentCache, OptimizerType, SubsetParams, TextEncoderCache, TrainConfig

if TYPE_CHECKING:  # pragma: no cover - typing only; the forecast imports torch
    from core.training.vram_forecast import VramForecast

GIB = 2**30
# Sizes cards are sold in, for the person to choose from when no GPU is found here.
CARD_SIZES_GB = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 80)
DEFAULT_CARD_GB = 8  # the most common card among people training LoRAs at home

Size = tuple[int, int]
# (config, image sizes, subsets) -> its forecast: forecast_for, or a stand-in in tests
ForecastFn = Callable[[TrainConfig, "Sequence[Size] | None", "Sequence[SubsetParams] | None"], "VramForecast"]


class AdviceCancelled(Exception):
    """The caller no longer wants the advice (a newer config replaced this one)."""


# ---------------------------------------------------------------------------- the card
@dataclass(frozen=True)
class Card:
    name: str
    total_bytes: int
    detected: bool  # found on this computer; else a size the person chose

    @property
    def size_label(self) -> str:
        return gib(self.total_bytes)


def detected_card() -> Card | None:
    """The first CUDA GPU's name and memory, or None without one (or without a working torch).
    Asking creates the CUDA context in this process, which a run here would create anyway."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        properties = torch.cuda.get_device_properties(0)
        return Card(str(properties.name), int(properties.total_memory), True)
    except Exception:  # noqa: BLE001 - a broken driver means "no card found", not a crash
        return None


def chosen_card(size_gb: int) -> Card:
    return Card(f"{size_gb} GB GPU", size_gb * GIB, False)


def gib(n: int) -> str:
    """Bytes as cards and drivers count them: "6.3 GB" for 6.3 GiB; whole sizes without decimals."""
    value = n / GIB
    if value >= 1 and abs(value - round(value)) < 0.05:
        return f"{round(value)} GB"
    return f"{value:.1f} GB"


# ---------------------------------------------------------------------------- the forecast's bucket
def bucket_for(config: TrainConfig, sizes: Sequence[Size] | None) -> Size:
    """The largest bucket ``config`` trains at for images of ``sizes`` (width, height), as the
    dataset plan assigns them; the resolution when there are no images or the bucket settings
    are impossible (validation names those)."""
    from core.data.buckets import BucketAssigner, BucketError, ImageTooSmall
    from core.data.plan import bucket_settings
    from core.training.vram_forecast import largest_bucket

    resolution = (int(config.dataset.resolution[0]), int(config.dataset.resolution[1]))
    if not sizes:
        return resolution
    try:
        assigner = BucketAssigner(bucket_settings(config.dataset))
    except BucketError:
        return resolution
    buckets = set()
    for width, height in set(sizes):
        try:
            buckets.add(tuple(assigner.assign(width, height).bucket))
        except ImageTooSmall:
            continue
    return largest_bucket(sorted(buckets), resolution)  # type: ignore[arg-type]


def forecast_for(config: TrainConfig, sizes: Sequence[Size] | None = None,
                 subsets: Sequence[SubsetParams] | None = None) -> VramForecast:
    """The forecast at the largest bucket ``config`` gives images of ``sizes``."""
    from core.training.vram_forecast import forecast_vram

    return forecast_vram(config, bucket=bucket_for(config, sizes), subsets=subsets)


# ---------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Change:
    """One field assignment, by the path Project.set_value and --set use."""

    path: str
    value: Any


@dataclass(frozen=True)
class Candidate:
    key: str  # one of ORDER
    label: str  # for people: what changes and what it costs
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Suggestion:
    label: str
    changes: tuple[Change, ...]
    forecast: VramForecast
    fits: bool
    keys: tuple[str, ...]  # the candidates combined (one for a single change)


@dataclass(frozen=True)
class VramAdvice:
    forecast: VramForecast  # of the config as it is
    card_bytes: int
    suggestions: tuple[Suggestion, ...]  # the changes that fit, cheapest first; empty when it fits
    closest: Suggestion | None = None  # when nothing fits: every change combined

    @property
    def fits(self) -> bool:
        return self.forecast.driver <= self.card_bytes


def apply_changes(config: TrainConfig, changes: Sequence[Change]) -> TrainConfig:
    """A copy of ``config`` with ``changes`` made (the config a suggestion's forecast is of)."""
    changed = copy.deepcopy(config)
    for change in changes:
        *groups, name = change.path.split(".")
        target: Any = changed
        for group in groups:
            target = getattr(target, group)
        setattr(target, name, change.value)
    return changed


def _gradient_checkpointing(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    if config.training.gradient_checkpointing:
        return None
    return Candidate("gradient_checkpointing", "Turn on gradient checkpointing: the same result, about 30% slower",
                     (Change("training.gradient_checkpointing", True),))


def _text_encoder_cache(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    from core.training.placement import caption_is_fixed

    if config.dataset.text_encoder_cache is not TextEncoderCache.OFF or config.network.train_text_encoder \
            or not all(caption_is_fixed(s) for s in subsets):
        return None  # cached already, or impossible: a trained encoder, or captions that change
    return Candidate("text_encoder_cache", "Cache the text encoders' outputs: the same result, and the "
                                           "encoders leave the GPU", (Change("dataset.text_encoder_cache",
                                                                              TextEncoderCache.MEMORY),))


def _latent_cache(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    if config.dataset.latent_cache is not LatentCache.OFF or any(s.random_crop for s in subsets):
        return None  # a random crop needs the pixels every step
    return Candidate("latent_cache", "Cache latents in memory: the same result, and the VAE leaves the GPU",
                     (Change("dataset.latent_cache", LatentCache.MEMORY),))


def _adamw_8bit(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    if config.optimizer.type is not OptimizerType.ADAMW or missing_package(OptimizerType.ADAMW8BIT):
        return None
    return Candidate("adamw8bit", "Use 8-bit AdamW: the optimizer state in 8 bits, nearly the same result",
                     (Change("optimizer.type", OptimizerType.ADAMW8BIT),))


def _fp8_base_weights(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    """The frozen U-Net (and text encoder) weights stored in fp8 and cast up layer by layer
    (core.models.fp8): half their memory; the model computes from weights rounded to 3
    mantissa bits. Needs fp16 or bf16 mixed precision (validation says so otherwise, which
    leaves the candidate out)."""
    if config.model.fp8_base or config.model.fp8_base_unet:
        return None
    return Candidate("fp8_base", "Store the frozen base weights in fp8 (fp8_base): half their memory, "
                     "slightly less precise", (Change("model.fp8_base", True),))


def _smaller_batch(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    batch, accumulation = config.training.batch_size, config.training.gradient_accumulation_steps
    if batch < 2:
        return None
    factor = next(f for f in range(2, batch + 1) if batch % f == 0)  # halves an even batch exactly
    if accumulation * factor > 1024:  # the field's maximum
        return None
    smaller, more = batch // factor, accumulation * factor
    return Candidate("smaller_batch",
                     f"Batch size {batch} → {smaller} with gradient accumulation {accumulation} → {more}: the same "
                     f"effective batch ({batch * accumulation}) and steps, slower",
                     (Change("training.batch_size", smaller), Change("training.gradient_accumulation_steps", more)))


def _unet_only(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    if not (config.network.train_text_encoder and config.network.train_unet):
        return None
    return Candidate("unet_only", "Train the U-Net only: changes what is trained (no text-encoder LoRA); "
                                  "its outputs can then be cached", (Change("network.train_text_encoder", False),))


def _lower_resolution(config: TrainConfig, subsets: Sequence[SubsetParams]) -> Candidate | None:
    step = config.dataset.bucket_reso_steps
    width, height = (int(v) for v in config.dataset.resolution)
    lower = (width - step, height - step)
    if min(lower) < max(64, config.dataset.min_bucket_reso):
        return None
    return Candidate("lower_resolution", f"Resolution {width}×{height} → {lower[0]}×{lower[1]}: less detail learned",
                     (Change("dataset.resolution", lower),))


ORDER: tuple[Callable[[TrainConfig, Sequence[SubsetParams]], Candidate | None], ...] = (
    _gradient_checkpointing, _text_encoder_cache, _latent_cache, _adamw_8bit, _fp8_base_weights, _smaller_batch,
    _unet_only, _lower_resolution)


def candidates(config: TrainConfig, subsets: Sequence[SubsetParams] | None = None) -> list[Candidate]:
    """The changes that apply to ``config``, cheapest first; none that would make it invalid."""
    from core.training.validation import ERROR, validate

    subsets = list(config.dataset.subsets if subsets is None else subsets)
    # Judged by the fields with errors: a problem the config has already is not the change's.
    known = {p.path for p in validate(config, check_paths=False) if p.severity == ERROR}
    found = []
    for make in ORDER:
        candidate = make(config, subsets)
        if candidate is None:
            continue
        changed = apply_changes(config, candidate.changes)
        if any(p.path not in known for p in validate(changed, check_paths=False) if p.severity == ERROR):
            continue
        found.append(candidate)
    return found


# ---------------------------------------------------------------------------- the advice
def advise(config: TrainConfig, card_bytes: int, *, sizes: Sequence[Size] | None = None,
           subsets: Sequence[SubsetParams] | None = None, forecast: VramForecast | None = None,
           forecast_fn: ForecastFn | None = None, cancelled: Callable[[], bool] = lambda: False) -> VramAdvice:
    """Whether ``config`` fits a card of ``card_bytes`` (as the driver counts, see
    VramForecast.driver) and, when not, the changes that fit (see the module docstring).
    ``forecast`` is the config's own when already made; ``cancelled`` is asked between
    forecasts and raises :class:`AdviceCancelled` when it says so."""
    run = forecast_fn or forecast_for

    def predict(changed: TrainConfig) -> VramForecast:
        if cancelled():
            raise AdviceCancelled
        return run(changed, sizes, subsets)

    base = forecast if forecast is not None else predict(config)
    if base.driver <= card_bytes:
        return VramAdvice(base, card_bytes, ())
    options = candidates(config, subsets)
    singles = [_suggest(config, (c,), predict, card_bytes) for c in options]
    fitting = tuple(s for s in singles if s.fits)
    if fitting or len(options) < 2:
        return VramAdvice(base, card_bytes, fitting, None if fitting else next(iter(singles), None))
    combined = None
    for count in range(2, len(options) + 1):
        combined = _suggest(config, tuple(options[:count]), predict, card_bytes)
        if combined.fits:
            return VramAdvice(base, card_bytes, (combined,))
    return VramAdvice(base, card_bytes, (), combined)


def _suggest(config: TrainConfig, chosen: tuple[Candidate, ...], predict: Callable[[TrainConfig], VramForecast],
             card_bytes: int) -> Suggestion:
    changes = tuple(change for candidate in chosen for change in candidate.changes)
    forecast = predict(apply_changes(config, changes))
    label = chosen[0].label if len(chosen) == 1 else "Together: " + "; ".join(_short(c.label) for c in chosen)
    return Suggestion(label, changes, forecast, forecast.driver <= card_bytes, tuple(c.key for c in chosen))


def _short(label: str) -> str:
    return label.split(":", 1)[0]


def iter_lines(advice: VramAdvice) -> Iterator[str]:
    """The advice for people (a log, a tooltip)."""
    of = f"≈ {gib(advice.forecast.driver)} of your {gib(advice.card_bytes)}"
    if advice.fits:
        yield f"{of}: fits"
        return
    yield f"{of}: does not fit"
    for suggestion in advice.suggestions:
        yield f"  {suggestion.label} (≈ {gib(suggestion.forecast.driver)})"
    closest = advice.closest
    if not advice.suggestions:
        yield "  no change on the list fits this card" + ("" if closest is None else (
            f"; all {len(closest.keys)} together still need ≈ {gib(closest.forecast.driver)}" if len(closest.keys) > 1
            else f"; {_short(closest.label).lower()} would still need ≈ {gib(closest.forecast.driver)}"))
