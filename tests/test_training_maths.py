"""Optimisers, schedules, loss weighting and failure advice."""

import math

import pytest
import torch

from core.config.schema import OptimizerParams, OptimizerType, ScheduleParams, Scheduler, TrainConfig
from core.training.errors import NonFiniteLoss, diagnose, is_out_of_memory
from core.training.loss import min_snr_weights, sample_noise, weighted_loss
from core.config.optimizers import Lion, OptimizerSetupError, optimizer_description, warmup_steps
from core.training.optim import ParamGroup, build_optimizer, build_scheduler, current_lrs, group_lrs


def _groups(te_lr=5e-4):
    return [ParamGroup("unet", [torch.nn.Parameter(torch.ones(3))], 1e-3),
            ParamGroup("text_encoder", [torch.nn.Parameter(torch.ones(2))], te_lr)]


def _step(optimizer, groups):
    for g in groups:
        for p in g.params:
            p.grad = torch.full_like(p, 0.5)
    optimizer.step()


@pytest.mark.parametrize("kind", [OptimizerType.ADAMW, OptimizerType.PRODIGY, OptimizerType.DADAPT_ADAM,
                                  OptimizerType.LION, OptimizerType.ADAFACTOR])
def test_every_optimizer_builds_with_named_groups_and_steps(kind):
    groups = _groups(te_lr=1e-3 if kind.adapts_lr else 5e-4)  # d-adapting ones need one lr
    optimizer = build_optimizer(groups, OptimizerParams(type=kind, learning_rate=1e-3))
    _step(optimizer, groups)
    lrs, dlrs = current_lrs(optimizer)
    assert set(lrs) == {"unet", "text_encoder"}
    assert bool(dlrs) == kind.adapts_lr
    if not kind.adapts_lr:  # d-adapting optimisers take their first real step once d moves
        assert not torch.equal(groups[0].params[0], torch.ones(3))


def test_prodigy_dlr_grows_from_d0():
    groups = [ParamGroup("unet", [torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(0)))], 1.0)]
    optimizer = build_optimizer(groups, OptimizerParams(type=OptimizerType.PRODIGY, learning_rate=1.0, d0=1e-6))
    dlrs = []
    for _ in range(6):
        groups[0].params[0].grad = groups[0].params[0].detach().clone()
        optimizer.step()
        dlrs.append(current_lrs(optimizer)[1]["unet"])
    assert dlrs[0] == pytest.approx(1e-6)
    assert dlrs[-1] > 10 * dlrs[0]


def test_prodigy_refuses_different_group_learning_rates_clearly():
    with pytest.raises(OptimizerSetupError, match="Prodigy needs the same learning rate"):
        build_optimizer(_groups(), OptimizerParams(type=OptimizerType.PRODIGY))


def test_prodigy_growth_rate_bounds_the_growth_of_d():
    groups = [ParamGroup("unet", [torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(0)))], 1.0)]
    optimizer = build_optimizer(groups, OptimizerParams(type=OptimizerType.PRODIGY, learning_rate=1.0,
                                                        d0=1e-6, growth_rate=1.02))
    previous = None
    for _ in range(6):
        groups[0].params[0].grad = groups[0].params[0].detach().clone()
        optimizer.step()
        d = current_lrs(optimizer)[1]["unet"]
        # While d is still d0, Prodigy's first estimate may jump at once (by design);
        # from then on the growth rate bounds each step.
        if previous is not None and previous != 1e-6:
            assert d <= previous * 1.02 * (1 + 1e-9)
        previous = d


def test_adamw8bit_trains_on_a_cpu_with_8_bit_states():
    # The schema default and the 8 GB preset's optimizer must run on the README's install.
    weight = torch.nn.Parameter(torch.ones(64, 128))  # bitsandbytes keeps 32-bit states below 4096 values
    optimizer = build_optimizer([ParamGroup("unet", [weight], 1e-3)], OptimizerParams(type=OptimizerType.ADAMW8BIT))
    assert type(optimizer).__module__.startswith("bitsandbytes.optim")
    for _ in range(2):
        weight.grad = torch.full_like(weight, 0.5)
        optimizer.step()
    assert torch.all(weight.detach() < 1.0)
    assert optimizer.state[weight]["state1"].dtype == torch.uint8


def test_adamw8bit_without_bitsandbytes_names_the_package_and_the_nearest_choice(monkeypatch):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # "import bitsandbytes" raises ImportError
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(OptimizerSetupError, match="optimizer.type: AdamW8bit needs the bitsandbytes package, "
                                                  "which is not installed here.*choose AdamW"):
        build_optimizer(_groups(), OptimizerParams(type=OptimizerType.ADAMW8BIT))


def test_unknown_extra_arguments_are_named():
    with pytest.raises(OptimizerSetupError, match="AdamW takes no argument 'foo'"):
        build_optimizer(_groups(), OptimizerParams(type=OptimizerType.ADAMW, extra_args={"foo": 1}))


def test_extra_arguments_reach_the_optimizer():
    optimizer = build_optimizer(_groups(), OptimizerParams(type=OptimizerType.ADAMW, extra_args={"amsgrad": True}))
    assert optimizer.param_groups[0]["amsgrad"] is True


def test_group_learning_rates_fall_back_to_the_base_rate():
    assert group_lrs(OptimizerParams(learning_rate=1e-4)) == (1e-4, 1e-4)
    assert group_lrs(OptimizerParams(learning_rate=1e-4, text_encoder_lr=5e-5)) == (1e-4, 5e-5)


def test_optimizer_description_is_kohyas_form():
    text = optimizer_description(OptimizerParams(type=OptimizerType.PRODIGY, weight_decay=0.01))
    assert text.startswith("prodigyopt.prodigy.Prodigy(") and "weight_decay=0.01" in text


def test_lion_steps_by_the_sign_of_the_momentum():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = Lion([p], lr=0.1)
    p.grad = torch.tensor([3.0, -0.001])
    optimizer.step()
    assert torch.allclose(p, torch.tensor([-0.1, 0.1]))


def test_warmup_from_steps_or_ratio_and_the_schedule_shape():
    assert warmup_steps(ScheduleParams(warmup_steps=7), 100) == 7
    assert warmup_steps(ScheduleParams(warmup_ratio=0.1), 100) == 10
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, ScheduleParams(scheduler=Scheduler.COSINE, warmup_steps=2), 10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05


def test_min_snr_weights_cap_easy_timesteps():
    alphas = torch.linspace(0.999, 0.001, 1000)
    weights = min_snr_weights(alphas, torch.tensor([0, 999]), gamma=5.0, v_prediction=False)
    assert weights[0] < 0.01 and weights[1] == pytest.approx(1.0)
    v = min_snr_weights(alphas, torch.tensor([999]), gamma=5.0, v_prediction=True)
    assert v[0] < 1.0


def test_noise_offset_shifts_each_channel_by_a_constant():
    latents = torch.zeros(2, 4, 8, 8)
    plain = sample_noise(latents, 0.0, torch.Generator().manual_seed(1))
    shifted = sample_noise(latents, 0.5, torch.Generator().manual_seed(1))
    difference = shifted - plain
    assert torch.allclose(difference, difference[:, :, :1, :1].expand_as(difference))
    assert difference.abs().sum() > 0


def test_prior_loss_weight_scales_regularisation_samples():
    prediction, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    assert weighted_loss(prediction, target, torch.tensor([1.0, 1.0])).item() == 1.0
    assert weighted_loss(prediction, target, torch.tensor([1.0, 0.5])).item() == 0.75


def test_out_of_memory_advice_names_this_runs_values():
    config = TrainConfig()
    config.training.batch_size = 4
    config.dataset.resolution = (1024, 1024)
    error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(error)
    diagnosis = diagnose(error, config)
    assert diagnosis.kind == "oom"
    text = "\n".join(diagnosis.advice)
    assert "from 4 to 2" in text and "gradient_checkpointing" in text and "1024x1024" in text


def test_nan_loss_advice_mentions_learning_rate_and_precision():
    diagnosis = diagnose(NonFiniteLoss(12, math.nan), TrainConfig())
    assert diagnosis.kind == "nan" and "step 12" in diagnosis.summary
    assert any("learning rate" in a for a in diagnosis.advice)


def test_a_full_disk_is_named():
    import errno
    diagnosis = diagnose(OSError(errno.ENOSPC, "No space left on device"), TrainConfig())
    assert diagnosis.kind == "disk"


def test_a_starting_lora_of_other_dims_is_a_config_problem_naming_the_field():
    from core.kohya.lora_format import KohyaFormatError
    diagnosis = diagnose(KohyaFormatError("the file has dim 16, alpha 8; the settings say dim 4, alpha 1"),
                         TrainConfig())
    assert diagnosis.kind == "config" and diagnosis.summary.startswith("network.init_weights")


def test_the_bitsandbytes_note_about_its_optional_kernels_package_is_not_shown(caplog):
    import logging

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
                       "you already `pip install kernels`", "No module named 'kernels'")
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["another bitsandbytes warning"]
