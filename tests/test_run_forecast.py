"""A run on a CUDA device records its VRAM forecast in summary.json when it starts, before the
model loads (core.training.run_forecast). The CUDA path is exercised on the CPU: the device
decision is stubbed, the demo model is forecast (about a second)."""

import json
from pathlib import Path

import pytest
import torch

from core.data.plan import plan_dataset
from core.training import run_forecast
from core.training.engine import Trainer
from core.training.events import Finished, ListSink, Status
from core.training.vram_forecast import forecast_vram, largest_bucket
from tests.engine_fixtures import tiny_config


def _run(config):
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    run_dir = Path(result.run_dir)
    return run_dir, json.loads((run_dir / "summary.json").read_text()), sink


@pytest.fixture
def as_on_cuda(monkeypatch):
    """The engine decides as it would on a CUDA device (the run itself stays on the CPU)."""
    monkeypatch.setattr(run_forecast, "wanted", lambda device: True)


def test_the_forecast_is_made_only_for_a_cuda_device():
    assert run_forecast.wanted(torch.device("cuda")) and run_forecast.wanted(torch.device("cuda", 1))
    assert not run_forecast.wanted(torch.device("cpu")) and not run_forecast.wanted(torch.device("mps"))


def test_a_cuda_run_records_the_forecast_at_its_largest_bucket_from_its_start(tmp_path, as_on_cuda, monkeypatch):
    running = {}
    real_prepare_data = Trainer._prepare_data

    def look(self):  # the run folder is open, the model loaded, nothing trained yet
        running.update(json.loads((self.run_dir / "summary.json").read_text()))
        return real_prepare_data(self)

    monkeypatch.setattr(Trainer, "_prepare_data", look)
    config = tiny_config(tmp_path, steps=1)
    run_dir, summary, sink = _run(config)

    plan = plan_dataset(config.dataset, config.training)
    bucket = largest_bucket(list(plan.buckets), config.dataset.resolution)
    assert bucket in plan.buckets
    expected = forecast_vram(config, bucket=bucket, subsets=[s.params for s in plan.subsets])
    assert summary["vram_forecast"] == {"peak": expected.peak, "driver": expected.driver,
                                        "training_peak": expected.training_peak, "bucket": list(bucket),
                                        "batch_size": 2}
    assert running["status"] == "running" and running["vram_forecast"] == summary["vram_forecast"]
    assert any(e.text.startswith("forecasting the VRAM") for e in sink.of(Status))
    log = (run_dir / "log.txt").read_text()
    assert log.count("VRAM forecast:") == 1 and f"at batch 2, {bucket[0]}x{bucket[1]}" in log


def test_a_forecast_that_fails_is_recorded_as_an_error_and_the_run_goes_on(tmp_path, as_on_cuda, monkeypatch):
    import core.training.vram_forecast as vram_forecast

    def broken(*args, **kwargs):
        raise RuntimeError("no config for this model")

    monkeypatch.setattr(vram_forecast, "forecast_vram", broken)
    run_dir, summary, _ = _run(tiny_config(tmp_path, steps=1))
    assert summary["vram_forecast"] == {"error": "RuntimeError: no config for this model"}
    assert "VRAM forecast could not be made (RuntimeError: no config for this model)" in \
        (run_dir / "log.txt").read_text()


def test_a_cpu_run_records_no_forecast(tmp_path, monkeypatch):
    import core.training.vram_forecast as vram_forecast

    def never(*args, **kwargs):
        raise AssertionError("a CPU run must not forecast")

    monkeypatch.setattr(vram_forecast, "forecast_vram", never)
    _, summary, _ = _run(tiny_config(tmp_path, steps=1))
    assert summary["vram_forecast"] is None and summary["memory_kind"] == "rss"


def test_the_forecast_leaves_the_random_stream_of_the_run_as_it_was(tmp_path):
    """The run seeds the global generator before it plans; the forecast comes between that and
    the LoRA's initialisation, so a run trains the same LoRA with or without it."""
    config = tiny_config(tmp_path)
    plan = plan_dataset(config.dataset, config.training)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    recorded = run_forecast.forecast_run(config, plan, config.training.mixed_precision)
    assert recorded["peak"] > 0
    assert torch.equal(torch.get_rng_state(), before)
