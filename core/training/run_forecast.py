"""The VRAM forecast a run records in its summary.json, so that the Runs comparison and sweeps
can show what was forecast next to what was measured (and calibration can be read off real runs).

Made at the start of a run on a CUDA device, before the model loads, at the plan's largest
bucket: ``{"peak", "driver", "training_peak", "bucket", "batch_size"}`` in bytes (see
:class:`~core.training.vram_forecast.VramForecast`), or ``{"error": ...}`` when the forecast
could not be made. A failed forecast never fails the run: it is a prediction, the run is the fact.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from core.config.schema import MixedPrecision, TrainConfig
from core.data.dataset_plan import DatasetPlan

log = logging.getLogger("lorakiln.run")

KEYS = ("peak", "driver", "training_peak", "bucket", "batch_size")


def wanted(device: torch.device) -> bool:
    """Whether a run on ``device`` records a forecast. Only on a CUDA device: the forecast is of
    a CUDA GPU's memory, and on a CPU the measured peak is the process's RAM (the whole
    process, the host copies of every model included), which it does not predict; a figure
    beside it would invite a comparison that means nothing."""
    return device.type == "cuda"


def forecast_run(config: TrainConfig, plan: DatasetPlan, precision: MixedPrecision) -> dict[str, Any]:
    """The forecast for this run, as summary.json holds it; logs one line either way.
    ``precision`` is the one the run trains in (a card without bf16 trains in fp16)."""
    from core.training.vram_forecast import forecast_vram, gb, largest_bucket

    if precision is not config.training.mixed_precision:
        config = replace(config, training=replace(config.training, mixed_precision=precision))
    bucket = largest_bucket(list(plan.buckets), tuple(config.dataset.resolution))  # type: ignore[arg-type]
    try:
        # The dry run draws no random numbers from the global generator; fork_rng makes sure of
        # it, so a run trains the same LoRA with or without its forecast.
        with torch.random.fork_rng(devices=[]):
            forecast = forecast_vram(config, bucket=bucket, subsets=[s.params for s in plan.subsets] or None)
    except Exception as error:  # noqa: BLE001 - a forecast that fails must not fail the run
        text = f"{type(error).__name__}: {error}"
        log.warning("VRAM forecast could not be made (%s); the run goes on without it", text)
        return {"error": text}
    width, height = forecast.bucket
    log.info("VRAM forecast: %s of tensors at batch %d, %dx%d (≈ %s as the driver will show it)",
             gb(forecast.peak), forecast.batch_size, width, height, gb(forecast.driver))
    return {"peak": forecast.peak, "driver": forecast.driver, "training_peak": forecast.training_peak,
            "bucket": [width, height], "batch_size": forecast.batch_size}
