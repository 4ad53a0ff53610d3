"""Importing kohya_ss GUI JSON and sd-scripts config / dataset config TOML files."""

from __future__ import annotations

import enum
import json
import math
import shutil
from pathlib import Path

import pytest
import tomli_w

from core.cli.main import main
from core.config.schema import (GROUPS, Attention, Duration, LatentCache, NetworkType, OptimizerType, Sampler,
                         Scheduler, SubsetParams)
from core.kohya.import_config import ImportResult, KohyaImportError, import_kohya
from core.config.params import PathKind, coerce_value, optional_inner, param_specs, spec_for
from core.config.presets import loads_preset

DATA = Path(__file__).parent / "data" / "kohya"
SAMPLE_JSON = DATA / "kohya_ss_lora.json"
CONFIG_TOML = DATA / "sd_scripts_config.toml"
DATASET_TOML = DATA / "dataset_config.toml"


def _write_json(tmp_path: Path, **changes) -> Path:
    data = json.loads(SAMPLE_JSON.read_text("utf-8"))
    data.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), "utf-8")
    return path


def _listed(result: ImportResult) -> dict[str, list[str]]:
    """For each top-level key of the file, the lists it appears in (items of list-like values count
    under their key: "optimizer_args.betas" is optimizer_args)."""
    found: dict[str, list[str]] = {}
    for kind, entries in (("mapped", result.mapped), ("unsupported", result.unsupported),
                          ("ignored", result.ignored)):
        for entry in entries:
            found.setdefault(entry.key.split(".")[0], []).append(kind)
    return found


def _reasons(result: ImportResult) -> dict[str, str]:
    return {u.key: u.reason for u in result.unsupported + result.ignored}


@pytest.fixture(scope="module")
def sample() -> ImportResult:
    return import_kohya([SAMPLE_JSON])


# ---------------------------------------------------------------- nothing dropped


def test_the_sample_is_a_full_kohya_ss_lora_preset():
    assert len(json.loads(SAMPLE_JSON.read_text("utf-8"))) == 170


def test_every_key_of_the_sample_json_is_in_exactly_one_list(sample):
    keys = json.loads(SAMPLE_JSON.read_text("utf-8"))
    listed = _listed(sample)
    assert sorted(set(listed) - set(keys)) == []  # nothing invented
    assert sorted(k for k in keys if k not in listed) == []  # nothing dropped
    assert {k: kinds for k, kinds in listed.items() if len(set(kinds)) != 1 or
            (len(kinds) > 1 and k not in ("optimizer_args", "network_args"))} == {}


def test_every_set_option_of_the_sample_is_supported_rank_dropout_included(sample):
    assert sample.unsupported == []
    assert sample.config.network.rank_dropout == 0.1
    assert {m.key: m.field for m in sample.mapped}["rank_dropout"] == "network.rank_dropout"


def test_off_and_default_values_of_unsupported_features_are_ignored_not_unsupported(sample):
    reasons = {u.key: u.reason for u in sample.ignored}
    assert reasons["color_aug"] == "empty or off"
    assert reasons["max_timestep"] == "Kohya's default (off)"
    assert reasons["conv_dim"].startswith("only used by LoCon")


# ---------------------------------------------------------------- the values


def test_the_sample_json_values(sample):
    c = sample.config
    assert c.model.base_model == "D:/models/v1-5-pruned-emaonly.safetensors"  # another machine's path kept
    assert (c.network.type, c.network.dim, c.network.alpha, c.network.dropout) == (NetworkType.LORA, 32, 16.0, 0.1)
    assert (c.optimizer.type, c.optimizer.weight_decay, c.optimizer.betas) == (OptimizerType.ADAMW8BIT, 0.05,
                                                                               (0.9, 0.99))
    assert (c.optimizer.learning_rate, c.optimizer.unet_lr, c.optimizer.text_encoder_lr) == (1e-4, 1e-4, 5e-5)
    assert (c.schedule.scheduler, c.schedule.num_cycles) == (Scheduler.COSINE_WITH_RESTARTS, 3)
    assert c.schedule.warmup_ratio == pytest.approx(0.1) and c.schedule.warmup_steps == 0
    assert (c.dataset.resolution, c.dataset.max_bucket_reso, c.dataset.bucket_no_upscale) == ((512, 512), 2048, True)
    assert c.dataset.latent_cache is LatentCache.MEMORY
    assert (c.training.batch_size, c.training.mixed_precision.value, c.training.seed) == (2, "bf16", 1234)
    assert c.training.attention is Attention.SDPA and c.logging.tensorboard
    assert c.training.max_token_length == 75  # kohya_ss writes "75" as text
    assert c.sampling.sampler is Sampler.EULER_A and c.sampling.every_n_epochs == 2
    assert c.sampling.prompts.splitlines()[0].startswith("kilnstyle, vase")
    assert c.output.comment == "kilnstyle pottery; trigger word: kilnstyle"


def test_training_and_regularisation_folders_become_kohya_layout_subsets(sample):
    train, reg = sample.config.dataset.subsets
    assert (train.image_dir, train.kohya_layout, train.is_reg) == ("D:/lora/kilnstyle/img", True, False)
    assert (reg.image_dir, reg.kohya_layout, reg.is_reg) == ("D:/lora/kilnstyle/reg", True, True)
    for subset in (train, reg):  # the global caption options reach both, as in sd-scripts
        assert (subset.caption_extension, subset.shuffle_caption, subset.keep_tokens) == (".txt", True, 1)
        assert subset.caption_dropout_rate == 0.05


def test_max_train_steps_overrides_epoch_as_kohya_ss_does_and_says_so(sample):
    training = sample.config.training
    assert (training.duration, training.max_train_steps, training.max_train_epochs) == (Duration.STEPS, 1600, 10)
    assert _reasons(sample)["epoch"].startswith("overridden by max_train_steps")
    assert any("never passes epoch (10)" in w and "1600 steps" in w for w in sample.warnings)


def test_max_train_epochs_wins_over_max_train_steps_as_in_sd_scripts(tmp_path):
    result = import_kohya([_write_json(tmp_path, max_train_epochs=4)])
    training = result.config.training
    assert (training.duration, training.max_train_epochs) == (Duration.EPOCHS, 4)
    assert any("sd-scripts trains 4 epochs" in w for w in result.warnings)


def test_epoch_alone_trains_epochs(tmp_path):
    result = import_kohya([_write_json(tmp_path, max_train_steps=0, epoch=7)])
    assert (result.config.training.duration, result.config.training.max_train_epochs) == (Duration.EPOCHS, 7)
    assert "exactly from the bucket plan" in _reasons(result)["max_train_steps"]


def test_xformers_becomes_sdpa_with_a_warning(sample):
    assert any("PyTorch's fused attention" in w for w in sample.warnings)


def test_old_kohya_ss_spellings_numbers_and_booleans_as_text(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({
        "LoRA_type": "Kohya LoCon", "network_dim": "16", "network_alpha": "0", "conv_dim": "8",
        "conv_alpha": "4", "learning_rate": "0.0001", "unet_lr": "", "text_encoder_lr": "0",
        "train_batch_size": "3", "max_resolution": "768", "shuffle_caption": "True", "flip_aug": "False",
        "clip_skip": "0", "xformers": True, "lr_warmup": "5", "epoch": "6", "max_train_steps": "",
        "optimizer": "DAdaptation", "lora_network_weights": "", "caption_extension": ""}), "utf-8")
    result = import_kohya([path])
    c = result.config
    assert (c.network.type, c.network.dim, c.network.conv_dim, c.network.conv_alpha) == (NetworkType.LOCON, 16, 8, 4.0)
    assert c.network.alpha == 16.0  # alpha 0 means alpha = dim in Kohya
    assert (c.optimizer.learning_rate, c.optimizer.unet_lr, c.optimizer.text_encoder_lr) == (1e-4, None, None)
    assert c.optimizer.type is OptimizerType.DADAPT_ADAM
    assert (c.optimizer.weight_decay, c.optimizer.decouple) == (0.0, False)  # DAdaptAdam's own defaults
    assert (c.training.batch_size, c.dataset.resolution, c.model.clip_skip) == (3, (768, 768), 1)
    assert (c.training.duration, c.training.max_train_epochs) == (Duration.EPOCHS, 6)
    assert c.schedule.warmup_ratio == pytest.approx(0.05)
    assert any("alpha = dim" in w for w in result.warnings)
    assert any("DAdaptation is the preprint" in w for w in result.warnings)
    assert any("'.caption' files" in w for w in result.warnings)
    assert _reasons(result)["unet_lr"].startswith("0 means not set")


def test_text_encoder_lr_zero_with_a_unet_lr_trains_the_unet_only(tmp_path):
    result = import_kohya([_write_json(tmp_path, text_encoder_lr=0, unet_lr=0.0002)])
    assert result.config.network.train_text_encoder is False and result.config.network.train_unet
    assert result.config.optimizer.unet_lr == 0.0002
    assert any("network_train_unet_only" in w for w in result.warnings)


def test_network_types_lora_kiln_lacks_are_unsupported(tmp_path):
    result = import_kohya([_write_json(tmp_path, LoRA_type="LyCORIS/Diag-OFT", use_tucker=True)])
    reasons = {u.key: u.reason for u in result.unsupported}
    assert result.config.network.type is NetworkType.LORA
    assert "imported as LoRA" in reasons["LoRA_type"]
    assert reasons["use_tucker"].startswith("LyCORIS option")  # it matters for a LyCORIS type


def test_prodigy_takes_its_own_defaults_for_arguments_not_given(tmp_path):
    result = import_kohya([_write_json(tmp_path, optimizer="Prodigy", learning_rate=1,
                                       optimizer_args="decouple=True d_coef=2 growth_rate=inf")])
    opt = result.config.optimizer
    assert (opt.type, opt.weight_decay, opt.d_coef, opt.growth_rate) == (OptimizerType.PRODIGY, 0.0, 2.0, math.inf)
    assert any("Prodigy's own defaults" in w and "weight_decay=0.0" in w for w in result.warnings)


def test_unknown_optimizer_arguments_go_to_extra_args_typed(tmp_path):
    result = import_kohya([_write_json(tmp_path, optimizer="Adafactor",
                                       optimizer_args="scale_parameter=False relative_step=False clip_threshold=1.0")])
    assert result.config.optimizer.extra_args == {"scale_parameter": False, "relative_step": False,
                                                  "clip_threshold": 1.0}


def test_an_optimizer_lora_kiln_lacks_is_unsupported(tmp_path):
    result = import_kohya([_write_json(tmp_path, optimizer="PagedAdamW8bit")])
    assert "not implemented" in {u.key: u.reason for u in result.unsupported}["optimizer"]


def test_relative_paths_resolve_against_the_files_folder(tmp_path):
    path = _write_json(tmp_path, train_data_dir="img", reg_data_dir="", output_dir="../out",
                       pretrained_model_name_or_path="runwayml/stable-diffusion-v1-5")
    result = import_kohya([path])
    assert result.config.dataset.subsets[0].image_dir == str(tmp_path / "img")
    assert len(result.config.dataset.subsets) == 1
    assert Path(result.config.output.output_dir) == (tmp_path / ".." / "out")
    assert result.config.model.base_model == "runwayml/stable-diffusion-v1-5"
    assert any("Hugging Face model name" in w for w in result.warnings)


# ---------------------------------------------------------------- sd-scripts TOMLs


def test_dataset_config_levels_general_then_dataset_then_subset():
    result = import_kohya([DATASET_TOML])
    vases, bowls, reg = result.config.dataset.subsets
    assert (vases.keep_tokens, bowls.keep_tokens, reg.keep_tokens) == (2, 3, 3)  # subset > dataset > general
    assert (vases.caption_extension, bowls.caption_extension) == (".txt", ".caption")
    assert (vases.flip_aug, bowls.flip_aug) == (False, True)
    assert (vases.shuffle_caption, reg.shuffle_caption, reg.is_reg) == (True, False, True)
    assert all(s.caption_dropout_rate == 0.1 for s in (vases, bowls, reg))
    assert (vases.num_repeats, vases.class_tokens, vases.kohya_layout) == (10, "kilnstyle vase", False)
    assert vases.image_dir == str(DATA / "images" / "vases")
    assert result.config.dataset.resolution == (768, 512) and result.config.training.batch_size == 4
    reasons = _reasons(result)
    assert reasons["general.keep_tokens"] == "overridden by datasets[0].keep_tokens"
    assert reasons["datasets[0].subsets[2].color_aug"] == "dataset option not implemented in LoRA Kiln"
    mapped = {m.key: m.field for m in result.mapped}
    assert mapped["datasets[0].keep_tokens"] == "dataset.subsets[1].keep_tokens, dataset.subsets[2].keep_tokens"


@pytest.mark.parametrize("order", [(CONFIG_TOML, DATASET_TOML), (DATASET_TOML, CONFIG_TOML)], ids=["config-first",
                                                                                                    "dataset-first"])
def test_config_and_dataset_config_together(order):
    result = import_kohya(list(order))
    c = result.config
    configs = [kind for _, kind in result.sources if not kind.startswith("sample_prompts")]
    assert configs == ["sd-scripts config TOML", "sd-scripts dataset config TOML"] \
        if order[0] == CONFIG_TOML else ["sd-scripts dataset config TOML", "sd-scripts config TOML"]
    assert (c.network.type, c.network.dim, c.network.alpha, c.network.conv_dim) == (NetworkType.LOCON, 16, 8.0, 4)
    assert c.optimizer.type is OptimizerType.PRODIGY
    assert (c.optimizer.d_coef, c.optimizer.use_bias_correction, c.optimizer.betas) == (2.0, True, (0.9, 0.99))
    assert c.schedule.warmup_ratio == 0.05  # lr_warmup_steps below 1 is a fraction in sd-scripts
    assert (c.training.duration, c.training.max_train_epochs) == (Duration.EPOCHS, 12)
    assert c.training.batch_size == 4  # the dataset's batch_size overrides train_batch_size
    assert c.dataset.resolution == (768, 512) and c.dataset.latent_cache is LatentCache.DISK
    assert c.sampling.sampler is Sampler.EULER_A and "celadon" in c.sampling.prompts
    assert (c.output.keep_last_n, c.model.clip_skip) == (3, 2)
    assert c.model.base_model == str(DATA / "models" / "v1-5-pruned-emaonly.safetensors")
    reasons = _reasons(result)
    assert reasons["train_batch_size"] == "overridden by datasets[0].batch_size"
    assert reasons["caption_extension"] == "overridden by general.caption_extension"
    assert "persistent_data_loader_workers" in {u.key for u in result.ignored}  # no effect on training
    assert c.training.max_token_length == 225 and "max_token_length" in {m.key for m in result.mapped}


def test_a_hand_written_config_gets_sd_scripts_defaults_for_missing_keys(tmp_path):
    path = tmp_path / "mini.toml"
    path.write_text('pretrained_model_name_or_path = "model.safetensors"\ntrain_data_dir = "img"\n', "utf-8")
    result = import_kohya([path])
    c = result.config
    assert c.optimizer.type is OptimizerType.ADAMW and c.schedule.scheduler is Scheduler.CONSTANT
    assert (c.network.dim, c.dataset.subsets[0].caption_extension) == (4, ".caption")
    assert any("sd-scripts' defaults are used" in w for w in result.warnings)
    assert {m.key for m in result.mapped} == {"pretrained_model_name_or_path", "train_data_dir"}


def test_the_dataset_config_named_in_the_json_is_read(tmp_path):
    shutil.copy(DATASET_TOML, tmp_path / "dataset.toml")
    result = import_kohya([_write_json(tmp_path, dataset_config="dataset.toml")])
    assert len(result.config.dataset.subsets) == 3
    assert _reasons(result)["train_data_dir"] == "sd-scripts ignores it when a dataset config is given"


def test_datasets_after_the_first_may_not_change_the_resolution(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text('[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "a"\n'
                    '[[datasets]]\nresolution = 768\n[[datasets.subsets]]\nimage_dir = "b"\n', "utf-8")
    result = import_kohya([path])
    assert len(result.config.dataset.subsets) == 2 and result.config.dataset.resolution == (512, 512)
    assert "one dataset" in {u.key: u.reason for u in result.unsupported}["datasets[1].resolution"]


# ---------------------------------------------------------------- files that cannot be imported


def test_bad_json_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "LoRA_type": "Standard",\n  "network_dim": 8,,\n}', "utf-8")
    with pytest.raises(KohyaImportError) as info:
        import_kohya([path])
    assert "broken.json" in str(info.value) and "line 3" in str(info.value) and "column" in str(info.value)


@pytest.mark.parametrize("name, text, expected", [
    ("bad.toml", "network_dim = = 8", "not valid TOML"),
    ("other.json", '{"hello": 1}', "not a kohya_ss LoRA config"),
    ("preset.toml", "schema_version = 1\n", "LoRA Kiln preset"),
])
def test_other_unreadable_files(tmp_path, name, text, expected):
    (tmp_path / name).write_text(text, "utf-8")
    with pytest.raises(KohyaImportError, match=expected) as info:
        import_kohya([tmp_path / name])
    assert name in str(info.value)


def test_two_training_configs_are_refused():
    with pytest.raises(KohyaImportError, match="second file must be a dataset config"):
        import_kohya([SAMPLE_JSON, CONFIG_TOML])


# ---------------------------------------------------------------- the command


def test_cli_prints_a_clean_preset_and_reports_on_stderr(capsys):
    assert main(["import-kohya", str(SAMPLE_JSON)]) == 0
    out, err = capsys.readouterr()
    loaded = loads_preset(out)
    assert loaded.config.network.dim == 32 and loaded.description == "imported from kohya_ss_lora.json"
    assert "mapped (69):" in err and "NOT SUPPORTED" not in err
    assert "ignored (102), by reason:" in err and "warnings:" in err


def test_cli_writes_the_preset_with_o(tmp_path, capsys):
    target = tmp_path / "imported.toml"
    assert main(["import-kohya", str(CONFIG_TOML), str(DATASET_TOML), "-o", str(target)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"saved {target}" in err
    assert loads_preset(target.read_text("utf-8")).config.training.batch_size == 4


def test_cli_reports_validation_problems_as_warnings(tmp_path, capsys):
    assert main(["import-kohya", str(_write_json(tmp_path, output_name=""))]) == 0
    assert "check of the imported settings:" not in capsys.readouterr().err  # "" keeps the default name
    assert main(["import-kohya", str(_write_json(tmp_path, sample_prompts="", sample_every_n_epochs=1))]) == 0
    assert "sampling.prompts: sampling is turned on but there is no prompt" in capsys.readouterr().err


def test_cli_exit_code_2_on_a_bad_file(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text("{", "utf-8")
    assert main(["import-kohya", str(path)]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err


# ---------------------------------------------------------------- derived from the schema


def _other_value(spec):
    """A valid value of the field that is not its default, as a Kohya file would write it."""
    tp, default = optional_inner(spec.type), spec.default
    if spec.info.path is not PathKind.NONE:
        return "data/some/where"
    if tp is bool:
        return not default
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(m.value for m in tp if m is not default)
    if tp is int:
        return default + 1
    if tp is float:
        return (default or 0.0) + 0.25
    if tp is str:
        return "kiln_x"
    return [640, 448]  # the resolution


def test_every_schema_field_with_a_kohya_name_is_imported_under_that_name(tmp_path):
    # A field renamed or added to the schema with kohya= is imported with no change here.
    args, subset, expected = {}, {"image_dir": "data/some/where"}, {}
    for group, cls in [*GROUPS.items(), ("subset", SubsetParams)]:
        for spec in param_specs(cls):
            if spec.info.kohya and spec.name != "subsets":
                value = _other_value(spec)
                (subset if cls is SubsetParams else args)[spec.info.kohya] = value
                expected[(group, spec.name)] = value
    args["network_module"], args["network_args"] = "networks.lora", ["conv_dim=2"]  # conv_* need LoCon
    (tmp_path / "config.toml").write_text(tomli_w.dumps(args), "utf-8")
    (tmp_path / "dataset.toml").write_text(tomli_w.dumps({"datasets": [{"subsets": [subset]}]}), "utf-8")
    result = import_kohya([tmp_path / "config.toml", tmp_path / "dataset.toml"])
    assert result.unsupported == []
    for (group, name), value in expected.items():
        target = result.config.dataset.subsets[0] if group == "subset" else getattr(result.config, group)
        spec = spec_for(type(target), name)
        want = coerce_value(value, spec.type, name)
        if spec.info.path is not PathKind.NONE:
            want = str(tmp_path / want)
        assert getattr(target, name) == want, f"{group}.{name}"


NOISE_KEYS = {"noise_offset": 0.05, "adaptive_noise_scale": 0.01, "multires_noise_iterations": 8,
              "multires_noise_discount": 0.2}


@pytest.mark.parametrize("kind, used", [("Original", {"noise_offset", "adaptive_noise_scale"}),
                                        ("Multires", {"multires_noise_iterations", "multires_noise_discount"})])
def test_kohya_ss_noise_offset_type_picks_the_noise_keys_it_passes(tmp_path, kind, used):
    result = import_kohya([_write_json(tmp_path, noise_offset_type=kind, **NOISE_KEYS)])
    listed, training, defaults = _listed(result), result.config.training, type(result.config.training)()
    for key, value in NOISE_KEYS.items():
        if key in used:
            assert listed[key] == ["mapped"] and getattr(training, key) == value, key
        else:
            assert listed[key] == ["ignored"] and getattr(training, key) == getattr(defaults, key), key
            assert _reasons(result)[key] == f"not used with noise_offset_type {kind} (kohya_ss does not pass it)"
    assert listed["noise_offset_type"] == ["ignored"]


def test_sd_scripts_configs_map_every_noise_and_loss_option(tmp_path):
    args = {**NOISE_KEYS, "ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True,
            "debiased_estimation_loss": True, "scale_weight_norms": 1.0}
    (tmp_path / "config.toml").write_text(tomli_w.dumps(args), "utf-8")
    result = import_kohya([tmp_path / "config.toml"])
    assert result.unsupported == []
    training = result.config.training
    for key, value in args.items():
        target = result.config.network if key == "scale_weight_norms" else training
        assert getattr(target, key) == value, key


def test_the_sample_jsons_scale_weight_norms_is_mapped(sample):
    assert sample.config.network.scale_weight_norms == 1.0
    assert _listed(sample)["scale_weight_norms"] == ["mapped"]


@pytest.mark.parametrize("first", ["lora_network_weights", "network_weights"])
def test_old_and_current_spelling_together_use_the_current_one_and_report_the_old(tmp_path, first):
    # Found by fuzzing: the old spelling used to be dropped without a word when it came first.
    values = {"lora_network_weights": "old.safetensors", "network_weights": "new.safetensors"}
    second = next(key for key in values if key != first)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", first: values[first], second: values[second]}), "utf-8")
    result = import_kohya([path])
    assert Path(result.config.network.init_weights).name == "new.safetensors"
    assert _reasons(result)["lora_network_weights"] == "network_weights is also set, and is used"
    assert set(_listed(result)["lora_network_weights"]) == {"ignored"}


@pytest.mark.parametrize("fp8_base, fp8_base_unet", [(True, False), (False, True), ("True", "False")])
def test_fp8_base_and_fp8_base_unet_map_to_the_model_fields(tmp_path, fp8_base, fp8_base_unet):
    result = import_kohya([_write_json(tmp_path, fp8_base=fp8_base, fp8_base_unet=fp8_base_unet)])
    model = result.config.model
    assert (model.fp8_base, model.fp8_base_unet) == (fp8_base in (True, "True"), fp8_base_unet is True)
    mapped = {m.key: m.field for m in result.mapped}
    assert (mapped["fp8_base"], mapped["fp8_base_unet"]) == ("model.fp8_base", "model.fp8_base_unet")
    assert not {"fp8_base", "fp8_base_unet"} & {u.key for u in result.unsupported + result.ignored}


def test_an_sd_scripts_config_with_fp8_base_trains_with_fp8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n[training]\nfp8_base = true\n'
                    'mixed_precision = "bf16"\n', "utf-8")
    result = import_kohya([path])
    assert result.config.model.fp8_base and not result.config.model.fp8_base_unet
    assert "fp8_base" in {m.key for m in result.mapped}
