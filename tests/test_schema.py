"""The parameter schema: one source of truth, complete metadata, sane defaults."""

import enum
import math

import pytest

from core.config.schema import GROUPS, SubsetParams, TrainConfig
from core.config.params import FieldError, coerce_value, param_specs, range_problem

ALL_CLASSES = list(GROUPS.values()) + [SubsetParams]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_label_and_help_text(cls):
    for spec in param_specs(cls):
        assert spec.info.label.strip(), f"{cls.__name__}.{spec.name} has no label"
        assert len(spec.info.help) > 10, f"{cls.__name__}.{spec.name} has no real help text"


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_every_default_is_inside_its_own_range(cls):
    for spec in param_specs(cls):
        if spec.default is not None and spec.name != "subsets":
            assert range_problem(spec.default, spec.info) is None, f"{cls.__name__}.{spec.name}"


def test_enum_fields_list_their_choices():
    specs = {s.name: s for s in param_specs(GROUPS["optimizer"])}
    assert specs["type"].choices == ("AdamW", "AdamW8bit", "Prodigy", "DAdaptAdam", "Lion", "Adafactor")
    assert specs["learning_rate"].choices is None


def test_defaults_follow_sd_scripts_bucketing():
    data = TrainConfig().dataset
    assert (data.resolution, data.enable_bucket, data.min_bucket_reso, data.max_bucket_reso,
            data.bucket_reso_steps, data.bucket_no_upscale) == ((512, 512), True, 256, 1024, 64, False)


def test_training_length_defaults_to_sd_scripts_1600_steps():
    training = TrainConfig().training
    assert (training.duration.value, training.max_train_steps) == ("steps", 1600)


def test_prodigy_growth_rate_defaults_to_unbounded():
    assert math.isinf(TrainConfig().optimizer.growth_rate)


def test_every_group_is_part_of_the_config():
    config = TrainConfig()
    for name, cls in GROUPS.items():
        assert isinstance(getattr(config, name), cls)


@pytest.mark.parametrize("value, tp, expected", [
    (5, int, 5), (5.0, int, 5), (3, float, 3.0), (True, bool, True), ("x", str, "x"),
    (768, tuple[int, int], (768, 768)), ([640, 512], tuple[int, int], (640, 512)),
    (math.inf, float, math.inf), (2.0, float | None, 2.0),
])
def test_coercion_accepts_what_kohya_users_write(value, tp, expected):
    assert coerce_value(value, tp, "x.y") == expected


@pytest.mark.parametrize("value, tp", [
    ("5", int), (5.5, int), (True, int), ("1e-4", float), (1, bool), ("yes", bool),
    ([1, 2, 3], tuple[int, int]), (math.nan, float), (3, str),
])
def test_coercion_refuses_wrong_types_and_names_the_field(value, tp):
    with pytest.raises(FieldError) as err:
        coerce_value(value, tp, "group.field")
    assert err.value.path == "group.field"


def test_enum_choices_match_without_letter_case():
    tp = param_specs(GROUPS["optimizer"])[0].type
    assert isinstance(coerce_value("adamw8BIT", tp, "optimizer.type"), enum.Enum)
    with pytest.raises(FieldError, match="choose"):
        coerce_value("SGD", tp, "optimizer.type")
