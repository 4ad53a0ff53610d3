"""SDXL's settings in the schema: one or both text encoders with their own learning rates,
the text-encoder output cache, fields marked for SDXL only, and the built-in SDXL presets."""

import pytest

from core.config.params import param_specs, spec_for
from core.config.presets import builtin_preset_names, config_from_dict, find_preset, load_preset
from core.config.schema import (DEMO_MODEL, DatasetParams, ModelFamily, NetworkParams, OptimizerParams,
                                OptimizerParams as Opt, OptimizerType, SubsetParams, TextEncoderCache,
                                TrainConfig, text_encoder_lrs, trained_text_encoders)
from core.models import family as family_registry
from core.models.family import UnsupportedFamily
from core.models.sd1 import SD1Family
from core.training.placement import can_cache_text_states
from core.training.validation import ERROR, WARNING, errors, validate

TWO = ("text_encoder", "text_encoder_2")


class _StandInSDXL(SD1Family):
    """SDXL as validation sees it (name, label, two encoders), for branches without the family."""

    name = "sdxl"
    label = "SDXL"
    text_encoder_names = TWO

    def built_in_models(self) -> tuple[str, ...]:
        return ()

    def claims(self, spec: str) -> bool:
        return False


@pytest.fixture
def sdxl():
    """The SDXL family: the real one where it is registered, else a stand-in for this test."""
    try:
        yield family_registry.family_named("sdxl")
        return
    except UnsupportedFamily:
        pass
    family_registry.register(_StandInSDXL())
    try:
        yield family_registry.family_named("sdxl")
    finally:
        family_registry.unregister("sdxl")


def _sdxl_config(tmp_path, base_model: str = "") -> TrainConfig:
    config = TrainConfig()
    config.model.family = ModelFamily.SDXL
    config.model.base_model = base_model
    config.dataset.resolution = (1024, 1024)
    config.dataset.max_bucket_reso = 2048
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    return config


def _at(problems, path, severity=ERROR):
    return [p for p in problems if p.path == path and p.severity == severity]


# ---------------------------------------------------------------- the fields


def test_sdxl_only_fields_are_marked_for_sdxl_and_the_rest_for_every_family():
    marked = {f"{cls.__name__}.{s.name}" for cls in (NetworkParams, OptimizerParams, DatasetParams)
              for s in param_specs(cls) if s.info.families}
    assert marked == {"NetworkParams.train_text_encoder_1", "NetworkParams.train_text_encoder_2",
                      "OptimizerParams.text_encoder_2_lr"}
    info = spec_for(NetworkParams, "train_text_encoder_2").info
    assert info.families == ("sdxl",) and info.applies_to("sdxl") and not info.applies_to("sd1")
    assert spec_for(NetworkParams, "train_text_encoder").info.applies_to("sd1")


def test_train_text_encoder_keeps_meaning_both_encoders_and_the_switches_pick_one():
    net = NetworkParams()
    assert trained_text_encoders(net, TWO) == TWO
    net.train_text_encoder_2 = False
    assert trained_text_encoders(net, TWO) == ("text_encoder",)
    net.train_text_encoder_1, net.train_text_encoder_2 = False, True
    assert trained_text_encoders(net, TWO) == ("text_encoder_2",)
    net.train_text_encoder = False
    assert trained_text_encoders(net, TWO) == ()


def test_the_encoder_switches_do_not_apply_to_a_one_encoder_family():
    net = NetworkParams(train_text_encoder_1=False, train_text_encoder_2=False)
    assert trained_text_encoders(net, ("text_encoder",)) == ("text_encoder",)


def test_each_encoder_takes_its_learning_rate_with_fallbacks():
    assert text_encoder_lrs(Opt(learning_rate=1e-4), TWO) == {"text_encoder": 1e-4, "text_encoder_2": 1e-4}
    assert text_encoder_lrs(Opt(learning_rate=1e-4, text_encoder_lr=5e-5), TWO) == \
        {"text_encoder": 5e-5, "text_encoder_2": 5e-5}
    assert text_encoder_lrs(Opt(text_encoder_lr=5e-5, text_encoder_2_lr=2e-5), TWO) == \
        {"text_encoder": 5e-5, "text_encoder_2": 2e-5}
    assert text_encoder_lrs(Opt(text_encoder_lr=5e-5, text_encoder_2_lr=2e-5), ("text_encoder",)) == \
        {"text_encoder": 5e-5}


def test_new_fields_round_trip_through_a_preset_and_default_to_today_s_behaviour():
    config = TrainConfig()
    assert config.dataset.text_encoder_cache is TextEncoderCache.MEMORY
    assert config.optimizer.text_encoder_2_lr is None
    doc = {"network": {"train_text_encoder_1": False}, "optimizer": {"text_encoder_2_lr": 2e-5},
           "dataset": {"text_encoder_cache": "disk"}}
    loaded, _ = config_from_dict(doc)
    assert (loaded.network.train_text_encoder_1, loaded.optimizer.text_encoder_2_lr,
            loaded.dataset.text_encoder_cache) == (False, 2e-5, TextEncoderCache.DISK)


def test_the_text_cache_setting_off_turns_caching_off():
    config = TrainConfig()
    config.network.train_text_encoder = False
    subsets = [SubsetParams()]
    assert can_cache_text_states(config, subsets)
    config.dataset.text_encoder_cache = TextEncoderCache.OFF
    assert not can_cache_text_states(config, subsets)


# ---------------------------------------------------------------- validation


def test_a_disk_text_cache_with_a_trained_text_encoder_is_an_error_as_in_sd_scripts(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.dataset.text_encoder_cache = TextEncoderCache.DISK
    [problem] = _at(validate(config, check_paths=False), "dataset.text_encoder_cache")
    assert "U-Net only" in problem.message
    config.network.train_text_encoder = False
    assert _at(validate(config, check_paths=False), "dataset.text_encoder_cache") == []


def test_a_disk_text_cache_with_changing_captions_names_the_option(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.network.train_text_encoder = False
    config.dataset.text_encoder_cache = TextEncoderCache.DISK
    config.dataset.subsets[0].caption_dropout_rate = 0.1
    config.dataset.subsets.append(SubsetParams(image_dir=str(tmp_path), shuffle_caption=True))
    problems = errors(validate(config, check_paths=False))
    assert [p.path for p in problems] == ["dataset.subsets[0].caption_dropout_rate",
                                          "dataset.subsets[1].shuffle_caption"]
    assert "cannot be cached on disk" in problems[1].message


def test_the_memory_text_cache_caches_when_possible_and_never_complains(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.dataset.subsets[0].shuffle_caption = True
    assert [p for p in validate(config, check_paths=False) if "text_encoder_cache" in p.path] == []


def test_both_encoders_switched_off_trains_the_u_net_only_or_nothing(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.network.train_text_encoder_1 = config.network.train_text_encoder_2 = False
    assert _at(validate(config, check_paths=False), "network.train_text_encoder", WARNING)
    config.network.train_unet = False
    [problem] = _at(validate(config, check_paths=False), "network.train_unet")
    assert "nothing to train" in problem.message


def test_prodigy_needs_one_rate_for_both_encoders(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.optimizer.type = OptimizerType.PRODIGY
    config.optimizer.learning_rate = 1.0
    config.optimizer.text_encoder_2_lr = 0.5
    [problem] = _at(validate(config, check_paths=False), "optimizer.text_encoder_2_lr")
    assert "text encoder 1 1, text encoder 2 0.5" in problem.message
    config.network.train_text_encoder_2 = False  # the odd rate is unused
    assert _at(validate(config, check_paths=False), "optimizer.text_encoder_2_lr") == []


def test_all_rates_zero_counts_the_second_encoder(tmp_path, sdxl):
    config = _sdxl_config(tmp_path)
    config.network.train_unet = False
    config.network.train_text_encoder_1 = False
    config.optimizer.text_encoder_lr = 1e-4
    config.optimizer.text_encoder_2_lr = 0.0
    assert _at(validate(config, check_paths=False), "optimizer.learning_rate")
    config.optimizer.text_encoder_2_lr = 1e-5
    assert not _at(validate(config, check_paths=False), "optimizer.learning_rate")


def test_an_sdxl_field_set_for_sd1_is_a_warning_that_it_does_nothing(tmp_path):
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    config.optimizer.text_encoder_2_lr = 1e-5
    [problem] = _at(validate(config, check_paths=False), "optimizer.text_encoder_2_lr", WARNING)
    assert "only used for SDXL models" in problem.message
    assert errors(validate(config, check_paths=False)) == []


# ---------------------------------------------------------------- the presets


SDXL_PRESETS = ["sdxl-lora-8gb", "sdxl-prodigy"]


def test_the_sdxl_presets_are_built_in():
    assert set(SDXL_PRESETS) <= set(builtin_preset_names())


@pytest.mark.parametrize("name", SDXL_PRESETS)
def test_an_sdxl_preset_is_valid_once_a_base_model_is_chosen(name, tmp_path, sdxl):
    config = load_preset(find_preset(name)).config
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    config.output.output_dir = str(tmp_path / "runs")
    problems = validate(config)
    assert [p.path for p in errors(problems)] == ["model.base_model"]
    [empty] = errors(problems)
    assert "base model of the SDXL family" in empty.message and DEMO_MODEL not in empty.message
    assert [p for p in problems if p.severity == WARNING] == []


@pytest.mark.parametrize("name", SDXL_PRESETS)
def test_an_sdxl_preset_trains_the_u_net_only_with_cached_outputs_as_sd_scripts_allows(name):
    config = load_preset(find_preset(name)).config
    assert config.model.family is ModelFamily.SDXL and config.model.base_model == ""
    assert not config.network.train_text_encoder and config.network.train_unet
    assert config.dataset.text_encoder_cache is not TextEncoderCache.OFF
    assert config.model.no_half_vae and config.training.gradient_checkpointing
    assert config.dataset.resolution == (1024, 1024) and config.dataset.bucket_reso_steps in (32, 64)


def test_the_8gb_preset_is_the_low_memory_recipe():
    config = load_preset(find_preset("sdxl-lora-8gb")).config
    assert config.optimizer.type is OptimizerType.ADAMW8BIT
    assert config.training.batch_size == 1 and config.network.dim <= 16
    assert config.dataset.latent_cache.value == "disk"


def test_the_prodigy_preset_uses_rate_one():
    opt = load_preset(find_preset("sdxl-prodigy")).config.optimizer
    assert opt.type is OptimizerType.PRODIGY and opt.learning_rate == opt.unet_lr == 1.0
    assert opt.safeguard_warmup and opt.use_bias_correction and opt.decouple


def test_clip_skip_on_sdxl_is_a_warning_that_it_does_nothing(tmp_path):
    from core.models.sdxl import DEMO_SDXL_MODEL
    from core.training.validation import validate

    config = TrainConfig()
    config.model.base_model = DEMO_SDXL_MODEL
    config.model.clip_skip = 2
    [problem] = [p for p in validate(config) if p.path == "model.clip_skip"]
    assert problem.severity == WARNING and "no effect" in problem.message
    config.model.base_model = "builtin:demo-model"  # SD 1.x: clip skip 2 is a real choice
    assert not [p for p in validate(config) if p.path == "model.clip_skip"]
