"""Validation in core: (field path, message) for ranges, contradictions and missing paths."""

from core.config.schema import (DEMO_MODEL, Duration, LatentCache, ModelFamily, OptimizerType,
                         SubsetParams, TrainConfig)
from core.training.validation import ERROR, WARNING, errors, validate


def _valid(tmp_path) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    return config


def _paths(problems, severity=ERROR):
    return [p.path for p in problems if p.severity == severity]


def test_a_complete_config_has_no_errors(tmp_path):
    assert errors(validate(_valid(tmp_path))) == []


def test_defaults_alone_name_what_is_missing():
    assert _paths(validate(TrainConfig())) == ["dataset.subsets", "model.base_model"]


def test_out_of_range_values_set_in_code_are_caught(tmp_path):
    config = _valid(tmp_path)
    config.training.batch_size = 0
    config.dataset.subsets[0].caption_dropout_rate = 1.5
    assert set(_paths(validate(config))) == {"training.batch_size", "dataset.subsets[0].caption_dropout_rate"}


def test_resolution_below_the_minimum_bucket_is_an_error_with_advice(tmp_path):
    config = _valid(tmp_path)
    config.dataset.resolution = (192, 192)
    [problem] = errors(validate(config))
    assert problem.path == "dataset.resolution"
    assert "lower min_bucket_reso to 192 or less" in problem.message


def test_bucket_limits_are_rounded_to_the_step_before_comparing(tmp_path):
    config = _valid(tmp_path)
    config.dataset.resolution = (1280, 1280)
    config.dataset.max_bucket_reso = 1250  # rounds up to 1280
    assert errors(validate(config)) == []
    config.dataset.max_bucket_reso = 1024
    assert "raise max_bucket_reso to 1280 or more" in errors(validate(config))[0].message


def test_no_upscale_mode_still_checks_the_bucket_limits_as_sd_scripts_does(tmp_path):
    config = _valid(tmp_path)
    config.dataset.resolution = (1280, 1280)
    config.dataset.bucket_no_upscale = True
    assert _paths(validate(config)) == ["dataset.resolution"]


def test_a_minimum_bucket_above_the_maximum_names_the_minimum(tmp_path):
    config = _valid(tmp_path)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 1024, 512
    config.dataset.resolution = (512, 512)
    assert _paths(validate(config)) == ["dataset.min_bucket_reso"]


def test_without_buckets_the_limits_do_not_apply_but_sides_must_be_multiples_of_8(tmp_path):
    config = _valid(tmp_path)
    config.dataset.enable_bucket = False
    config.dataset.resolution = (1280, 1280)
    assert errors(validate(config)) == []
    config.dataset.resolution = (500, 500)
    assert _paths(validate(config)) == ["dataset.resolution"]


def test_warmup_longer_than_training_is_an_error(tmp_path):
    config = _valid(tmp_path)
    config.training.duration = Duration.STEPS
    config.training.max_train_steps = 100
    config.schedule.warmup_steps = 100
    assert _paths(validate(config)) == ["schedule.warmup_steps"]
    config.training.duration = Duration.EPOCHS
    assert errors(validate(config)) == []  # unknown until the plan gives the step count
    assert _paths(validate(config, total_steps=80)) == ["schedule.warmup_steps"]


def test_warmup_steps_and_ratio_together_are_a_contradiction(tmp_path):
    config = _valid(tmp_path)
    config.schedule.warmup_steps, config.schedule.warmup_ratio = 10, 0.1
    assert "schedule.warmup_steps" in _paths(validate(config))


def test_random_crop_with_a_latent_cache_is_refused(tmp_path):
    config = _valid(tmp_path)
    config.dataset.latent_cache = LatentCache.DISK
    config.dataset.subsets[0].random_crop = True
    assert _paths(validate(config)) == ["dataset.subsets[0].random_crop"]


def test_training_nothing_is_refused(tmp_path):
    config = _valid(tmp_path)
    config.network.train_unet = config.network.train_text_encoder = False
    assert _paths(validate(config)) == ["network.train_unet"]


def test_sd2_is_not_supported_yet(tmp_path):
    config = _valid(tmp_path)
    config.model.family = ModelFamily.SD2
    [problem] = errors(validate(config))
    assert problem.message.startswith("SD 2.x is not supported yet")


def test_missing_paths_are_named(tmp_path):
    config = _valid(tmp_path)
    config.model.base_model = str(tmp_path / "nope.safetensors")
    config.dataset.subsets.append(SubsetParams(image_dir=str(tmp_path / "missing")))
    config.network.init_weights = str(tmp_path)  # a folder, not a file
    assert set(_paths(validate(config))) == {"model.base_model", "dataset.subsets[1].image_dir",
                                             "network.init_weights"}


def test_a_text_file_as_base_model_is_refused(tmp_path):
    config = _valid(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    config.model.base_model = str(tmp_path / "notes.txt")
    assert "is not a model file" in errors(validate(config))[0].message


def test_path_checks_can_be_skipped(tmp_path):
    config = _valid(tmp_path)
    config.dataset.subsets[0].image_dir = str(tmp_path / "missing")
    assert errors(validate(config, check_paths=False)) == []


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    config = _valid(tmp_path)
    (tmp_path / "out").write_text("")
    config.output.output_dir = str(tmp_path / "out")
    assert _paths(validate(config)) == ["output.output_dir"]


def test_bad_output_names_are_refused(tmp_path):
    config = _valid(tmp_path)
    for name in ["", "a/b", "what?", ".."]:
        config.output.output_name = name
        assert _paths(validate(config)) == ["output.output_name"], name


def test_sampling_without_prompts_is_an_error(tmp_path):
    config = _valid(tmp_path)
    config.sampling.every_n_epochs = 1
    config.sampling.prompts = "# only a comment\n\n"
    assert _paths(validate(config)) == ["sampling.prompts"]


def test_prodigy_with_a_small_learning_rate_is_warned_about(tmp_path):
    config = _valid(tmp_path)
    config.optimizer.type = OptimizerType.PRODIGY
    config.optimizer.learning_rate = 1e-4
    problems = validate(config)
    assert errors(problems) == []
    assert _paths(problems, WARNING) == ["optimizer.learning_rate"]


def test_prodigy_with_different_group_rates_is_refused_before_training(tmp_path):
    config = _valid(tmp_path)
    config.optimizer.type = OptimizerType.PRODIGY
    config.optimizer.learning_rate, config.optimizer.text_encoder_lr = 1.0, 0.5
    assert _paths(validate(config)) == ["optimizer.text_encoder_lr"]
    config.optimizer.text_encoder_lr = 0.0
    assert errors(validate(config)) == []


def test_errors_come_before_warnings(tmp_path):
    config = _valid(tmp_path)
    config.network.alpha = 64.0  # warning: above dim
    config.training.batch_size = 0  # error
    severities = [p.severity for p in validate(config)]
    assert severities == sorted(severities, key=lambda s: s != ERROR)


def _hide_packages(monkeypatch, *hidden):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.split(".")[0] in hidden else real_find_spec(name, *args))


def test_every_optimizer_of_the_schema_can_run_on_the_readme_install(tmp_path):
    # AdamW8bit is the default: a fresh install must be able to train with it.
    for kind in OptimizerType:
        config = _valid(tmp_path)
        config.optimizer.type = kind
        config.optimizer.learning_rate = 1.0 if kind.adapts_lr else 1e-4
        assert [p for p in errors(validate(config)) if p.path == "optimizer.type"] == [], kind


def test_an_optimizer_whose_package_is_missing_is_an_error_naming_the_nearest_choice(tmp_path, monkeypatch):
    _hide_packages(monkeypatch, "bitsandbytes")
    config = _valid(tmp_path)
    config.optimizer.type = OptimizerType.ADAMW8BIT
    [problem] = errors(validate(config))
    assert problem.path == "optimizer.type"
    assert problem.message.startswith("AdamW8bit needs the bitsandbytes package, which is not installed here")
    assert problem.message.endswith("or choose AdamW, the nearest optimizer that runs here")


def test_the_nearest_choice_is_one_that_runs_here(tmp_path, monkeypatch):
    config = _valid(tmp_path)
    config.optimizer.type, config.optimizer.learning_rate = OptimizerType.PRODIGY, 1.0
    _hide_packages(monkeypatch, "prodigyopt")
    [problem] = errors(validate(config))
    assert "choose DAdaptAdam, the nearest" in problem.message  # also finds its own step size
    _hide_packages(monkeypatch, "prodigyopt", "dadaptation")
    [problem] = errors(validate(config))
    assert "choose AdamW, the nearest" in problem.message


def test_optimizer_availability_is_checked_without_importing_torch(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys\nfrom core.config.schema import TrainConfig, OptimizerType\nfrom core.training.validation import validate\n"
              "config = TrainConfig()\n"
              "for kind in OptimizerType:\n    config.optimizer.type = kind\n    validate(config, check_paths=False)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bitsandbytes', 'transformers')))\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_fp8_base_weights_without_mixed_precision_are_refused_as_sd_scripts_does(tmp_path):
    from core.config.schema import MixedPrecision

    for switch in ("fp8_base", "fp8_base_unet"):
        config = _valid(tmp_path)
        setattr(config.model, switch, True)
        config.training.mixed_precision = MixedPrecision.NO
        [problem] = errors(validate(config))
        assert problem.path == f"model.{switch}"
        assert "training.mixed_precision fp16 or bf16" in problem.message and "turn fp8 off" in problem.message
        config.training.mixed_precision = MixedPrecision.BF16
        assert validate(config) == []


def test_both_fp8_switches_warn_that_the_text_encoders_stay_out_of_fp8(tmp_path):
    config = _valid(tmp_path)
    config.model.fp8_base = config.model.fp8_base_unet = True
    [problem] = validate(config)
    assert (problem.path, problem.severity) == ("model.fp8_base", WARNING)
    assert "only the U-Net is in fp8" in problem.message


def test_adaptive_noise_scale_needs_a_noise_offset(tmp_path):
    config = _valid(tmp_path)
    config.training.adaptive_noise_scale = 0.01
    assert _paths(validate(config)) == ["training.adaptive_noise_scale"]
    config.training.noise_offset = 0.05
    assert _paths(validate(config)) == []


def test_multires_noise_with_a_noise_offset_is_a_warning(tmp_path):
    config = _valid(tmp_path)
    config.training.multires_noise_iterations, config.training.noise_offset = 6, 0.05
    assert _paths(validate(config)) == []
    assert "training.multires_noise_iterations" in _paths(validate(config), WARNING)


def test_random_input_perturbation_strength_without_a_gamma_is_a_warning(tmp_path):
    config = _valid(tmp_path)
    config.training.ip_noise_gamma_random_strength = True
    assert "training.ip_noise_gamma_random_strength" in _paths(validate(config), WARNING)
    config.training.ip_noise_gamma = 0.1
    assert "training.ip_noise_gamma_random_strength" not in _paths(validate(config), WARNING)


def test_scale_weight_norms_is_refused_for_lycoris_modules(tmp_path):
    from core.config.schema import NetworkType

    config = _valid(tmp_path)
    config.network.scale_weight_norms = 1.0
    assert _paths(validate(config)) == []
    config.network.type = NetworkType.LOHA
    assert "network.scale_weight_norms" in _paths(validate(config))


def test_the_noise_options_ranges(tmp_path):
    config = _valid(tmp_path)
    config.training.multires_noise_discount, config.training.ip_noise_gamma = 1.5, -0.1
    config.network.scale_weight_norms = -1.0
    assert set(_paths(validate(config))) == {"training.multires_noise_discount", "training.ip_noise_gamma",
                                             "network.scale_weight_norms"}
