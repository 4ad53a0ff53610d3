"""SDXL Kohya configs: kohya_ss SDXL LoRA presets and sd-scripts sdxl_train_network.py TOMLs
import with every key accounted for, and export writes what sdxl_train_network.py accepts."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.config.schema import (Attention, LatentCache, ModelFamily, NetworkType, OptimizerType, SubsetParams,
                                TextEncoderCache, TrainConfig)
from core.kohya.export import build_export, write_export
from core.kohya.import_config import ImportResult, import_kohya

DATA = Path(__file__).parent / "data" / "kohya"
UNET_ONLY_JSON = DATA / "kohya_ss_sdxl_lora.json"  # kohya_ss: 8 GB style, U-Net only, outputs cached
PRODIGY_JSON = DATA / "kohya_ss_sdxl_prodigy.json"  # kohya_ss: Pony LoCon with Prodigy, encoders trained
SDXL_TOML = DATA / "sd_scripts_sdxl_config.toml"  # sd-scripts sdxl_train_network.py --config_file
SDXL_ARGS = frozenset(line for line in (DATA / "sdxl_train_network_args.txt").read_text("utf-8").splitlines()
                      if line and not line.startswith("#"))
SDXL_KEYS = ("sdxl", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs", "cache_text_encoder_outputs",
             "cache_text_encoder_outputs_to_disk", "learning_rate_te1", "learning_rate_te2",
             "network_train_unet_only", "no_half_vae", "text_encoder_lr")


def _keys(path: Path) -> set[str]:
    if path.suffix == ".json":
        return set(json.loads(path.read_text("utf-8")))
    return {key for section in tomllib.loads(path.read_text("utf-8")).values() for key in section}


def _lists(result: ImportResult) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for kind, entries in (("mapped", result.mapped), ("unsupported", result.unsupported),
                          ("ignored", result.ignored)):
        for entry in entries:
            found.setdefault(entry.key.split(".")[0], []).append(kind)
    return found


def _mapped(result: ImportResult) -> dict[str, str]:
    return {m.key: m.field for m in result.mapped}


def _write(tmp_path: Path, source: Path, **changes: Any) -> Path:
    data = json.loads(source.read_text("utf-8"))
    data.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), "utf-8")
    return path


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, "utf-8")
    return path


def _flat(text: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tomllib.loads(text).items():
        flat.update(value if isinstance(value, dict) else {name: value})
    return flat


# ---------------------------------------------------------------- every key accounted for


@pytest.mark.parametrize("path", [UNET_ONLY_JSON, PRODIGY_JSON, SDXL_TOML], ids=lambda p: p.name)
def test_every_key_of_an_sdxl_config_is_in_exactly_one_list(path):
    result = import_kohya([path])
    lists = _lists(result)
    assert set(lists) == _keys(path)
    assert {key: kinds for key, kinds in lists.items() if len(kinds) != 1 and kinds[0] != "mapped"} == {}
    present = [key for key in SDXL_KEYS if key in lists]
    assert present and all("unsupported" not in lists[key] for key in present), lists


@pytest.mark.parametrize("path", [UNET_ONLY_JSON, PRODIGY_JSON, SDXL_TOML], ids=lambda p: p.name)
def test_nothing_in_the_sdxl_samples_is_unsupported(path):
    assert import_kohya([path]).unsupported == []


# ---------------------------------------------------------------- values


def test_the_kohya_ss_unet_only_sdxl_preset():
    result = import_kohya([UNET_ONLY_JSON])
    config, mapped = result.config, _mapped(result)
    assert config.model.family is ModelFamily.SDXL and mapped["sdxl"] == "model.family"
    assert config.model.no_half_vae and mapped["sdxl_no_half_vae"] == "model.no_half_vae"
    assert config.dataset.text_encoder_cache is TextEncoderCache.MEMORY
    assert mapped["sdxl_cache_text_encoder_outputs"] == "dataset.text_encoder_cache"
    assert not config.network.train_text_encoder and config.network.train_unet  # text_encoder_lr 0
    assert (config.network.dim, config.network.alpha) == (8, 4.0)
    assert config.optimizer.type is OptimizerType.ADAMW8BIT and config.optimizer.unet_lr == 1e-4
    assert config.dataset.resolution == (1024, 1024) and config.dataset.bucket_reso_steps == 32
    assert config.dataset.latent_cache is LatentCache.DISK
    assert config.training.attention is Attention.SDPA and config.training.batch_size == 1
    assert not [w for w in result.warnings if "refuses" in w]


def test_the_kohya_ss_prodigy_preset_that_trains_the_encoders():
    result = import_kohya([PRODIGY_JSON])
    config = result.config
    assert config.model.family is ModelFamily.SDXL and config.model.no_half_vae
    assert config.network.train_text_encoder and config.network.type is NetworkType.LOCON
    assert config.optimizer.type is OptimizerType.PRODIGY
    assert config.optimizer.text_encoder_lr == config.optimizer.unet_lr == 1.0
    assert config.optimizer.d_coef == 0.8 and config.optimizer.safeguard_warmup
    assert config.training.max_token_length == 225 and config.model.clip_skip == 2
    # switched off in the file: our default (cache where possible) stays, and it is listed as ignored
    assert config.dataset.text_encoder_cache is TextEncoderCache.MEMORY
    assert "sdxl_cache_text_encoder_outputs" in {i.key for i in result.ignored}


def test_the_sd_scripts_sdxl_toml():
    result = import_kohya([SDXL_TOML])
    config, mapped = result.config, _mapped(result)
    assert config.model.family is ModelFamily.SDXL  # no "sdxl" switch in sd-scripts: inferred, and said
    assert any("model.family: set to sdxl" in w for w in result.warnings)
    assert config.dataset.text_encoder_cache is TextEncoderCache.DISK
    assert mapped["cache_text_encoder_outputs_to_disk"] == "dataset.text_encoder_cache"
    assert mapped["network_train_unet_only"] == "network.train_text_encoder" and not config.network.train_text_encoder
    assert config.model.no_half_vae and config.optimizer.text_encoder_lr == 1e-5  # the list's rate
    assert config.dataset.bucket_reso_steps == 32 and config.dataset.resolution == (1024, 1024)


def test_kohya_ss_sdxl_switches_are_ignored_when_sdxl_is_off(tmp_path):
    path = _write(tmp_path, UNET_ONLY_JSON, sdxl=False)
    result = import_kohya([path])
    reasons = {i.key: i.reason for i in result.ignored}
    assert reasons["sdxl_no_half_vae"] == reasons["sdxl_cache_text_encoder_outputs"] == "only used for SDXL models"
    # sdxl off leaves the family to be read from the model file (auto)
    assert result.config.model.family is ModelFamily.AUTO and not result.config.model.no_half_vae


def test_learning_rate_te1_and_te2_give_each_encoder_its_rate(tmp_path):
    path = _toml(tmp_path, "learning_rate = 1e-4\nlearning_rate_te1 = 4e-5\nlearning_rate_te2 = 2e-5\n")
    result = import_kohya([path])
    opt, mapped = result.config.optimizer, _mapped(result)
    assert (opt.text_encoder_lr, opt.text_encoder_2_lr) == (4e-5, 2e-5)
    assert mapped == {**mapped, "learning_rate_te1": "optimizer.text_encoder_lr",
                      "learning_rate_te2": "optimizer.text_encoder_2_lr"}
    assert result.config.model.family is ModelFamily.SDXL


def test_a_zero_encoder_rate_leaves_that_encoder_untrained_as_sd_scripts(tmp_path):
    path = _write(tmp_path, PRODIGY_JSON, learning_rate_te1=1.0, learning_rate_te2=0)
    net = import_kohya([path]).config.network
    assert net.train_text_encoder and net.train_text_encoder_1 and not net.train_text_encoder_2
    path = _write(tmp_path, PRODIGY_JSON, learning_rate_te1=0, learning_rate_te2=0)
    result = import_kohya([path])
    assert not result.config.network.train_text_encoder
    assert any("both 0" in w for w in result.warnings)


def test_a_list_of_text_encoder_rates_uses_the_first_as_networks_lora_does(tmp_path):
    path = _toml(tmp_path, "text_encoder_lr = [5e-5, 1e-5]\ncache_text_encoder_outputs = false\n")
    result = import_kohya([path])
    assert result.config.optimizer.text_encoder_lr == 5e-5
    assert result.config.optimizer.text_encoder_2_lr is None
    assert any("first rate" in w for w in result.warnings)
    assert result.unsupported == []


def test_caching_outputs_while_training_the_encoders_is_imported_with_a_warning(tmp_path):
    path = _write(tmp_path, PRODIGY_JSON, sdxl_cache_text_encoder_outputs=True)
    result = import_kohya([path])
    assert result.config.network.train_text_encoder
    assert any("sd-scripts refuses that" in w for w in result.warnings)


# ---------------------------------------------------------------- export


def _sdxl(**network: Any) -> TrainConfig:
    config = TrainConfig()
    config.model.family = ModelFamily.SDXL
    config.model.base_model = "/models/sd_xl_base_1.0.safetensors"
    config.dataset.subsets = [SubsetParams(image_dir="/data/img")]
    for name, value in network.items():
        setattr(config.network, name, value)
    return config


@pytest.mark.parametrize("path", [UNET_ONLY_JSON, PRODIGY_JSON, SDXL_TOML], ids=lambda p: p.name)
def test_an_sdxl_export_uses_only_sdxl_train_network_arguments(path, tmp_path):
    exported = build_export(import_kohya([path]).config, tmp_path)
    args = _flat(exported.config_toml)
    assert set(args) - SDXL_ARGS == set()
    assert "v2" not in args
    assert "accelerate launch sdxl_train_network.py --config_file config.toml" in exported.config_toml


def test_a_unet_only_export_caches_the_outputs_and_a_trained_encoder_does_not(tmp_path):
    config = _sdxl(train_text_encoder=False)
    config.dataset.text_encoder_cache = TextEncoderCache.DISK
    args = _flat(build_export(config, tmp_path).config_toml)
    assert args["network_train_unet_only"] and args["cache_text_encoder_outputs"]
    assert args["cache_text_encoder_outputs_to_disk"]
    args = _flat(build_export(_sdxl(), tmp_path).config_toml)  # sd-scripts would refuse the cache
    assert "cache_text_encoder_outputs" not in args and "network_train_unet_only" not in args
    shuffled = _sdxl(train_text_encoder=False)
    shuffled.dataset.subsets[0].shuffle_caption = True
    assert "cache_text_encoder_outputs" not in _flat(build_export(shuffled, tmp_path).config_toml)


def test_what_networks_lora_cannot_do_is_a_note(tmp_path):
    config = _sdxl(train_text_encoder_2=False)
    config.optimizer.text_encoder_2_lr = 2e-5
    notes = build_export(config, tmp_path).notes
    assert any("train_text_encoder_1" in n and "both or neither" in n for n in notes)
    config = _sdxl()
    config.optimizer.text_encoder_lr, config.optimizer.text_encoder_2_lr = 4e-5, 2e-5
    exported = build_export(config, tmp_path)
    assert any("text_encoder_2_lr (2e-05) is not written" in n for n in exported.notes)
    assert _flat(exported.config_toml)["text_encoder_lr"] == 4e-5
    config = _sdxl(train_text_encoder_1=False, train_text_encoder_2=False)
    assert _flat(build_export(config, tmp_path).config_toml)["network_train_unet_only"]


def test_clip_skip_1_is_left_out_for_sdxl_where_sd_scripts_warns_about_it(tmp_path):
    assert "clip_skip" not in _flat(build_export(_sdxl(), tmp_path).config_toml)
    config = _sdxl()
    config.model.clip_skip = 2
    assert _flat(build_export(config, tmp_path).config_toml)["clip_skip"] == 2


def test_the_sd_scripts_sdxl_toml_survives_export_and_import(tmp_path):
    original = import_kohya([SDXL_TOML]).config
    write_export(build_export(original, tmp_path), tmp_path)
    again = import_kohya([tmp_path / "config.toml"])
    assert again.unsupported == []
    # train/img does not exist here, so export writes it as one plain subset (a note says so)
    assert [s.image_dir for s in again.config.dataset.subsets] == [s.image_dir for s in original.dataset.subsets]
    again.config.dataset.subsets = original.dataset.subsets
    assert dataclasses.asdict(again.config) == dataclasses.asdict(original)


@pytest.mark.parametrize("path", [UNET_ONLY_JSON, PRODIGY_JSON], ids=lambda p: p.name)
def test_the_sdxl_values_of_a_kohya_ss_preset_survive_export_and_import(path, tmp_path):
    original = import_kohya([path]).config
    write_export(build_export(original, tmp_path), tmp_path)
    again = import_kohya([tmp_path / "config.toml"]).config
    for field in ("model.no_half_vae", "network.train_text_encoder", "network.train_unet",
                  "optimizer.text_encoder_lr", "optimizer.unet_lr", "dataset.bucket_reso_steps",
                  "dataset.resolution", "dataset.latent_cache", "network.type", "optimizer.d_coef"):
        group, name = field.split(".")
        assert getattr(getattr(again, group), name) == getattr(getattr(original, group), name), field
    if not original.network.train_text_encoder:  # the cache key itself says SDXL
        assert again.model.family is ModelFamily.SDXL
        assert again.dataset.text_encoder_cache is original.dataset.text_encoder_cache
