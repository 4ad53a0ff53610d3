"""VRAM advice (core.training.vram_advice): whether a config fits the card, and the cheapest
changes that would, each with the forecast of the config it makes. The order and the
combinations are specified with a stand-in forecast; the tiny demo model checks the real one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from core.config.schema import LatentCache, MixedPrecision, OptimizerType, SubsetParams, TextEncoderCache
from core.training import vram_advice
from core.training.vram_advice import (GIB, AdviceCancelled, Card, Change, advise, apply_changes, bucket_for,
                                       candidates, detected_card, forecast_for, gib)
from core.training.vram_forecast import VramForecast
from tests.engine_fixtures import tiny_config


def keys(config, subsets=None):
    return [c.key for c in candidates(config, subsets)]


def everything_off(tmp_path):
    """A config where every change on the list applies but the text-encoder cache (its encoder
    trains) and fp8 (it needs mixed precision; the tiny config trains in fp32)."""
    config = tiny_config(tmp_path)
    config.dataset.resolution = (512, 512)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 256, 1024
    config.dataset.latent_cache = LatentCache.OFF
    config.training.batch_size = 4
    return config


def fake_forecast(driver: int) -> VramForecast:
    return VramForecast(frozen_weights=0, trained_weights=0, optimizer_state=0, gradients=0, activations=driver,
                        resident_modules=0, training_peak=driver, caching_peak=0, sampling_peak=None, peak=driver,
                        driver=driver, bucket=(512, 512), batch_size=1, attention="sdpa", notes=())


def savings_forecast(calls):
    """A stand-in forecast: 1000 bytes, less 100 per change that saves memory."""
    def forecast(config, sizes, subsets):
        calls.append(config)
        saved = 100 * sum((config.training.gradient_checkpointing, config.dataset.latent_cache is not LatentCache.OFF,
                           config.optimizer.type is OptimizerType.ADAMW8BIT, config.training.batch_size < 4,
                           not config.network.train_text_encoder, config.dataset.resolution[0] < 512))
        return fake_forecast(1000 - saved)
    return forecast


# ---------------------------------------------------------------------------- which changes, in which order
def test_changes_come_cheapest_first(tmp_path):
    assert keys(everything_off(tmp_path)) == ["gradient_checkpointing", "latent_cache", "adamw8bit", "smaller_batch",
                                              "unet_only", "lower_resolution"]


def test_the_text_encoder_cache_is_offered_only_when_captions_can_be_cached(tmp_path):
    config = everything_off(tmp_path)
    config.network.train_text_encoder = False
    config.dataset.text_encoder_cache = TextEncoderCache.OFF
    assert keys(config)[:2] == ["gradient_checkpointing", "latent_cache"]  # shuffled captions change every epoch
    fixed = [SubsetParams(image_dir="x", shuffle_caption=False)]
    assert keys(config, fixed)[:2] == ["gradient_checkpointing", "text_encoder_cache"]
    assert "unet_only" not in keys(config, fixed)  # the U-Net trains alone already


def test_changes_already_made_are_left_out(tmp_path):
    config = everything_off(tmp_path)
    config.training.gradient_checkpointing = True
    config.dataset.latent_cache = LatentCache.DISK
    config.optimizer.type = OptimizerType.ADAMW8BIT
    config.training.batch_size = 1
    config.network.train_text_encoder = False
    assert keys(config) == ["lower_resolution"]


def test_fp8_base_weights_come_after_the_8bit_optimizer_when_training_in_half_precision(tmp_path):
    config = everything_off(tmp_path)
    assert "fp8_base" not in keys(config)  # fp32 training: fp8_base would be refused
    config.training.mixed_precision = MixedPrecision.BF16
    order = keys(config)
    assert order.index("adamw8bit") + 1 == order.index("fp8_base") < order.index("smaller_batch")
    fp8 = next(c for c in candidates(config) if c.key == "fp8_base")
    assert [(c.path, c.value) for c in fp8.changes] == [("model.fp8_base", True)]
    config.model.fp8_base_unet = True
    assert "fp8_base" not in keys(config)  # already on (for the U-Net)


def test_8bit_adamw_needs_bitsandbytes(tmp_path, monkeypatch):
    monkeypatch.setattr(vram_advice, "missing_package", lambda kind: "bitsandbytes")
    assert "adamw8bit" not in keys(everything_off(tmp_path))


def test_a_random_crop_keeps_latents_uncached(tmp_path):
    assert "latent_cache" not in keys(everything_off(tmp_path), [SubsetParams(image_dir="x", random_crop=True)])


@pytest.mark.parametrize("batch, accumulation, smaller, more", [(4, 1, 2, 2), (6, 3, 3, 6), (3, 1, 1, 3)])
def test_a_smaller_batch_keeps_the_effective_batch(tmp_path, batch, accumulation, smaller, more):
    config = everything_off(tmp_path)
    config.training.batch_size, config.training.gradient_accumulation_steps = batch, accumulation
    change = next(c for c in candidates(config) if c.key == "smaller_batch")
    assert change.changes == (Change("training.batch_size", smaller),
                              Change("training.gradient_accumulation_steps", more))
    assert f"same effective batch ({batch * accumulation})" in change.label


def test_the_resolution_goes_one_bucket_step_down_and_never_below_the_smallest_bucket(tmp_path):
    config = everything_off(tmp_path)
    config.dataset.bucket_reso_steps = 32
    lower = next(c for c in candidates(config) if c.key == "lower_resolution")
    assert lower.changes == (Change("dataset.resolution", (480, 480)),)
    config.dataset.min_bucket_reso = 512
    assert "lower_resolution" not in keys(config)


def test_a_change_that_would_make_the_config_invalid_is_left_out(tmp_path):
    config = everything_off(tmp_path)
    config.dataset.subsets[0].random_crop = True  # fine without a latent cache, an error with one
    assert "latent_cache" not in keys(config)


def test_applying_changes_copies_the_config(tmp_path):
    config = everything_off(tmp_path)
    changed = apply_changes(config, (Change("training.batch_size", 2), Change("dataset.resolution", (448, 448))))
    assert (changed.training.batch_size, changed.dataset.resolution) == (2, (448, 448))
    assert (config.training.batch_size, config.dataset.resolution) == (4, (512, 512))


# ---------------------------------------------------------------------------- the advice
def test_a_config_that_fits_gets_no_advice_and_costs_one_forecast(tmp_path):
    calls = []
    advice = advise(everything_off(tmp_path), 1000, forecast_fn=savings_forecast(calls))
    assert advice.fits and advice.suggestions == () and len(calls) == 1


def test_single_changes_that_fit_are_suggested_in_order_with_their_forecasts(tmp_path):
    calls = []
    advice = advise(everything_off(tmp_path), 900, forecast_fn=savings_forecast(calls))
    assert not advice.fits and advice.forecast.driver == 1000
    assert [s.keys for s in advice.suggestions] == [("gradient_checkpointing",), ("latent_cache",), ("adamw8bit",),
                                                    ("smaller_batch",), ("unet_only",), ("lower_resolution",)]
    assert all(s.fits and s.forecast.driver == 900 for s in advice.suggestions)


def test_when_no_single_change_fits_they_are_combined_in_order(tmp_path):
    advice = advise(everything_off(tmp_path), 750, forecast_fn=savings_forecast([]))
    [combined] = advice.suggestions
    assert combined.keys == ("gradient_checkpointing", "latent_cache", "adamw8bit")
    assert combined.forecast.driver == 700 and combined.label.startswith("Together: Turn on gradient checkpointing; ")
    assert dict((c.path, c.value) for c in combined.changes) == {
        "training.gradient_checkpointing": True, "dataset.latent_cache": LatentCache.MEMORY,
        "optimizer.type": OptimizerType.ADAMW8BIT}


def test_when_nothing_fits_the_closest_is_every_change_combined(tmp_path):
    advice = advise(everything_off(tmp_path), 100, forecast_fn=savings_forecast([]))
    assert advice.suggestions == () and advice.closest.forecast.driver == 400 and len(advice.closest.keys) == 6
    assert list(vram_advice.iter_lines(advice))[-1] == "  no change on the list fits this card; all 6 together still need ≈ 0.0 GB"


def test_a_given_forecast_is_not_made_again_and_cancelling_stops_the_search(tmp_path):
    calls = []
    config = everything_off(tmp_path)
    advise(config, 2000, forecast=fake_forecast(1000), forecast_fn=savings_forecast(calls))
    assert calls == []
    with pytest.raises(AdviceCancelled):
        advise(config, 900, forecast=fake_forecast(1000), forecast_fn=savings_forecast(calls), cancelled=lambda: True)


def test_the_demo_models_advice_lowers_the_forecast_and_applying_it_gives_that_forecast(tmp_path):
    """The real forecast of the tiny demo model on a card a little too small for it."""
    config = tiny_config(tmp_path)
    config.training.mixed_precision = MixedPrecision.FP16
    config.training.batch_size, config.network.train_text_encoder = 1, False  # fewer changes: a faster test
    base = forecast_for(config)
    advice = advise(config, base.driver - 1, forecast=base)
    assert not advice.fits and advice.suggestions
    order = [c.key for c in candidates(config)]
    assert [s.keys[0] for s in advice.suggestions] == [k for k in order if k in {s.keys[0] for s in advice.suggestions}]
    assert all(s.fits and s.forecast.driver < base.driver for s in advice.suggestions)
    first = advice.suggestions[0]
    assert first.keys == ("gradient_checkpointing",)
    assert forecast_for(apply_changes(config, first.changes)) == first.forecast


# ---------------------------------------------------------------------------- the card and the bucket
def test_the_card_is_cuda_device_0(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: SimpleNamespace(name=f"NVIDIA GeForce RTX 3060 #{index}", total_memory=12 * GIB))
    assert detected_card() == Card("NVIDIA GeForce RTX 3060 #0", 12 * GIB, True)


def test_no_card_without_cuda_or_with_a_broken_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detected_card() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def broken(index):
        raise RuntimeError("CUDA driver initialization failed")
    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    assert detected_card() is None


def test_sizes_are_written_as_cards_are_sold():
    assert (gib(8 * GIB), gib(int(6.3 * GIB)), gib(int(0.4 * GIB)), gib(int(79.19 * GIB))) == (
        "8 GB", "6.3 GB", "0.4 GB", "79.2 GB")


def test_the_forecast_bucket_is_the_largest_the_images_get(tmp_path):
    config = everything_off(tmp_path)
    assert bucket_for(config, None) == (512, 512)
    sizes = [(1024, 1024), (1536, 1024), (600, 900)]
    assert bucket_for(config, sizes) == (512, 512)
    config.dataset.resolution = (448, 448)
    assert bucket_for(config, sizes)[0] * bucket_for(config, sizes)[1] <= 448 * 448
