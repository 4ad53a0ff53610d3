"""Every optimizer setting of the schema reaches the optimizer it configures, with its value."""

import dataclasses

import pytest
import torch

from core.config.schema import OptimizerParams, OptimizerType
from core.training.optim import ParamGroup, build_optimizer

# Each field set away from its default (and from the optimizer's own default), so a setting
# that is dropped on the way shows up as the optimizer's default value.
SETTINGS = dict(learning_rate=0.75, weight_decay=0.03, betas=(0.8, 0.95), eps=1e-6, d_coef=2.5, growth_rate=1.07,
                d0=3e-5, safeguard_warmup=True, use_bias_correction=True, decouple=False)

# Where each setting lands in a parameter group; None: the optimizer has no such setting.
PRODIGY = dict(learning_rate="lr", weight_decay="weight_decay", betas="betas", eps="eps", d_coef="d_coef",
               growth_rate="growth_rate", d0="d0", safeguard_warmup="safeguard_warmup",
               use_bias_correction="use_bias_correction", decouple="decouple")
DADAPT_ADAM = dict(learning_rate="lr", weight_decay="weight_decay", betas="betas", eps="eps",
                   growth_rate="growth_rate", d0="d", use_bias_correction="use_bias_correction",
                   decouple="decouple", d_coef=None, safeguard_warmup=None)  # DAdaptAdam takes neither
WHERE = {OptimizerType.PRODIGY: PRODIGY, OptimizerType.DADAPT_ADAM: DADAPT_ADAM}
# Fields of OptimizerParams that are not an optimizer argument of their own.
NOT_ARGUMENTS = {"type", "unet_lr", "text_encoder_lr", "text_encoder_2_lr", "extra_args"}


def _optimizer(kind: OptimizerType, **changes) -> torch.optim.Optimizer:
    groups = [ParamGroup("unet", [torch.nn.Parameter(torch.ones(3))], SETTINGS["learning_rate"]),
              ParamGroup("text_encoder", [torch.nn.Parameter(torch.ones(2))], SETTINGS["learning_rate"])]
    return build_optimizer(groups, OptimizerParams(type=kind, **{**SETTINGS, **changes}))


def test_the_tables_name_every_optimizer_setting_of_the_schema():
    fields = {f.name for f in dataclasses.fields(OptimizerParams)} - NOT_ARGUMENTS
    assert set(SETTINGS) == fields
    assert all(set(where) == fields for where in WHERE.values())
    defaults = OptimizerParams()
    assert all(getattr(defaults, name) != value for name, value in SETTINGS.items())


@pytest.mark.parametrize("kind", list(WHERE), ids=lambda kind: kind.value)
def test_each_setting_reaches_every_parameter_group(kind):
    optimizer = _optimizer(kind)
    assert [g["name"] for g in optimizer.param_groups] == ["unet", "text_encoder"]
    for group in optimizer.param_groups:
        for name, key in WHERE[kind].items():
            if key is not None:
                value = group[key]
                expected = SETTINGS[name]
                assert (tuple(value) if name == "betas" else value) == pytest.approx(expected), (name, key)


@pytest.mark.parametrize("kind", list(WHERE), ids=lambda kind: kind.value)
def test_d_starts_at_d0(kind):
    optimizer = _optimizer(kind)
    assert all(group["d"] == pytest.approx(SETTINGS["d0"]) for group in optimizer.param_groups)


@pytest.mark.parametrize("kind, name, value", [(OptimizerType.PRODIGY, "slice_p", 11),
                                               (OptimizerType.DADAPT_ADAM, "log_every", 5)])
def test_extra_arguments_reach_the_d_adapting_optimizers(kind, name, value):
    optimizer = _optimizer(kind, extra_args={name: value})
    assert all(group[name] == value for group in optimizer.param_groups)
