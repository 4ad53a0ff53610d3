"""Precision on a GPU: bf16 only where the card computes it natively, and fp16's loss
scaler kept with the training state so a resumed run goes on with the scale it had."""

from pathlib import Path

import pytest
import torch

from core.config.schema import MixedPrecision
from core.config.presets import load_preset
from core.training import setup
from core.training.checkpoint import STATE_DIR, TrainingState, latest_state, load_state, save_state
from core.training.engine import Trainer
from core.training.events import Finished, ListSink
from core.training.resume import apply_state
from tests.engine_fixtures import tiny_config


def _card(monkeypatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # it counts emulation


@pytest.mark.parametrize("capability", [(7, 5), (7, 0), (6, 1)])
def test_bf16_on_a_card_without_native_bf16_trains_in_fp16_and_says_so(tmp_path, monkeypatch, capability):
    _card(monkeypatch, capability)
    config = tiny_config(tmp_path)
    config.training.mixed_precision = MixedPrecision.BF16
    precision, note = setup.choose_precision(config, has_cuda=True)
    assert precision is MixedPrecision.FP16
    assert f"compute capability {capability[0]}.{capability[1]}" in note and "fp16" in note


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_bf16_stays_bf16_on_ampere_and_newer(tmp_path, monkeypatch, capability):
    _card(monkeypatch, capability)
    config = tiny_config(tmp_path)
    config.training.mixed_precision = MixedPrecision.BF16
    assert setup.choose_precision(config, has_cuda=True) == (MixedPrecision.BF16, None)


def _optimizer_and_schedule() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _state(**changes) -> TrainingState:
    optimizer, schedule = _optimizer_and_schedule()
    values = dict(step=3, epoch=1, batch_in_epoch=3, wall_seconds=1.0, lora={}, optimizer=optimizer.state_dict(),
                  scheduler=schedule.state_dict(), generator=torch.Generator().get_state(),
                  torch_rng=torch.get_rng_state(), python_rng=None)
    return TrainingState(**{**values, **changes})


def test_a_saved_loss_scale_is_read_back_and_loaded_into_the_scaler(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(2.0 ** 9)  # as after overflows: another scale than a new scaler's
    path = save_state(tmp_path, _state(grad_scaler=scaler.state_dict()))
    loaded = load_state(path)
    assert loaded.grad_scaler == scaler.state_dict()
    fresh = torch.amp.GradScaler("cpu", growth_interval=7)
    apply_state(loaded, {}, *_optimizer_and_schedule(), torch.Generator(), [], tmp_path, fresh)
    assert fresh.get_scale() == 2.0 ** 9 and fresh.state_dict() == scaler.state_dict()


def test_a_state_saved_without_a_scaler_loads_and_leaves_the_scaler_as_it_starts(tmp_path):
    path = save_state(tmp_path, _state())
    loaded = load_state(path)
    assert loaded.grad_scaler is None
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    apply_state(loaded, {}, *_optimizer_and_schedule(), torch.Generator(), [], tmp_path, fresh)
    assert fresh.get_scale() == 2.0 ** 16


def test_an_fp16_run_saves_its_loss_scale_and_a_resume_goes_on_from_it(tmp_path, monkeypatch):
    """accelerate makes a GradScaler for fp16 on CUDA only; here one is given to the CPU run
    (fp32 maths, so no step overflows). It doubles the scale after every step, so the scale
    in the final state counts all the steps only when the resume took the saved one."""
    real = setup.make_accelerator

    def with_scaler(*args, **kwargs):  # noqa: ANN202
        accelerator = real(*args, **kwargs)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
        return accelerator

    monkeypatch.setattr(setup, "make_accelerator", with_scaler)
    config = tiny_config(tmp_path, steps=2)
    config.output.save_state = True
    first = Trainer(config, ListSink()).run()
    assert isinstance(first, Finished) and first.reason == "completed", first
    run = Path(first.run_dir)
    assert load_state(latest_state(run / STATE_DIR)).grad_scaler["scale"] == 2.0 ** 12
    config = load_preset(run / "config.toml").config
    config.training.max_train_steps = 4
    resumed = Trainer(config, ListSink(), resume_from=run).run()
    assert isinstance(resumed, Finished) and resumed.reason == "completed" and resumed.steps == 4, resumed
    assert load_state(latest_state(run / STATE_DIR)).grad_scaler["scale"] == 2.0 ** 14
