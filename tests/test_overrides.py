"""--set group.field=value: the same checks as presets, for one value at a time."""

import math

import pytest

from core.config.schema import OptimizerType, TrainConfig
from core.config.overrides import apply_override, apply_overrides
from core.config.params import FieldError


@pytest.mark.parametrize("assignment, check", [
    ("training.batch_size=4", lambda c: c.training.batch_size == 4),
    ("optimizer.type=prodigy", lambda c: c.optimizer.type is OptimizerType.PRODIGY),
    ("optimizer.growth_rate=inf", lambda c: math.isinf(c.optimizer.growth_rate)),
    ("optimizer.growth_rate=1.02", lambda c: c.optimizer.growth_rate == 1.02),
    ("dataset.resolution=768", lambda c: c.dataset.resolution == (768, 768)),
    ("dataset.resolution=[768, 512]", lambda c: c.dataset.resolution == (768, 512)),
    ("output.output_name=2024", lambda c: c.output.output_name == "2024"),
    ("training.gradient_checkpointing=true", lambda c: c.training.gradient_checkpointing),
    ("optimizer.unet_lr=none", lambda c: c.optimizer.unet_lr is None),
])
def test_values_are_read_like_toml(assignment, check):
    config = TrainConfig()
    apply_override(config, assignment)
    assert check(config)


def test_subsets_are_addressed_by_index_and_appended_at_the_end(tmp_path):
    config = TrainConfig()
    apply_override(config, f"dataset.subsets[0].image_dir={tmp_path}")
    apply_override(config, "dataset.subsets.0.num_repeats=5")
    assert config.dataset.subsets[0].num_repeats == 5
    with pytest.raises(FieldError, match="next index is 1"):
        apply_override(config, "dataset.subsets[3].num_repeats=2")


@pytest.mark.parametrize("assignment, message", [
    ("training.batch_size=0", "below the minimum"),
    ("training.batch_size=two", "expected a whole number"),
    ("trainig.seed=1", "did you mean 'training'"),
    ("network.dimm=2", "did you mean 'dim'"),
    ("network", "expected group.field=value"),
    ("optimizer.type=SGD", "choose"),
])
def test_bad_overrides_name_the_field(assignment, message):
    with pytest.raises(FieldError, match=message):
        apply_override(TrainConfig(), assignment)


def test_all_bad_overrides_are_collected():
    problems = apply_overrides(TrainConfig(), ["training.batch_size=0", "network.dim=8", "x.y=1"])
    assert [p for p, _ in problems] == ["training.batch_size", "x.y"]
