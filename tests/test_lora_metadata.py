"""The LoRA file's metadata (what front ends and model sites read) and the file itself."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from core.models.sd1 import FAMILY as SD1
from core.config.schema import (DatasetParams, Duration, NetworkParams, NetworkType, OptimizerType, SubsetParams,
                         TrainConfig)
from core.kohya.metadata import bucket_info, build_metadata, model_hashes, save_lora_file, tag_frequency
from core.data.dataset_plan import DatasetPlan
from core.data.plan import plan_dataset
from core.system.resources import resource_path

# Every key kohya-behaviour.md section 4 lists.
SECTION_4_KEYS = """ss_network_module ss_network_dim ss_network_alpha ss_network_args ss_base_model_version
ss_v2 ss_resolution ss_batch_size_per_device ss_total_batch_size ss_num_train_images ss_num_reg_images
ss_num_batches_per_epoch ss_num_epochs ss_epoch ss_steps ss_max_train_steps ss_learning_rate ss_unet_lr
ss_text_encoder_lr ss_lr_scheduler ss_lr_warmup_steps ss_optimizer ss_seed ss_clip_skip ss_mixed_precision
ss_gradient_checkpointing ss_gradient_accumulation_steps ss_max_grad_norm ss_noise_offset ss_min_snr_gamma
ss_enable_bucket ss_min_bucket_reso ss_max_bucket_reso ss_bucket_no_upscale ss_bucket_info ss_tag_frequency
ss_dataset_dirs ss_caption_dropout_rate ss_shuffle_caption ss_keep_tokens ss_flip_aug ss_cache_latents
ss_sd_model_name ss_output_name ss_training_started_at ss_training_finished_at ss_session_id
ss_training_comment modelspec.architecture modelspec.title modelspec.resolution modelspec.date
modelspec.prediction_type""".split()
JSON_KEYS = ("ss_network_args", "ss_bucket_info", "ss_tag_frequency", "ss_dataset_dirs", "ss_reg_dataset_dirs")


def _image(path: Path, size: tuple[int, int], caption: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 90, 60)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, "utf-8")


def _config(tmp_path: Path, **subset_options) -> TrainConfig:
    _image(tmp_path / "train" / "3_cat" / "a.png", (512, 512), "Cat, red, cat")
    _image(tmp_path / "train" / "3_cat" / "b.png", (512, 768), "cat, blue")
    _image(tmp_path / "train" / "2_dog" / "c.png", (768, 512), "dog")
    _image(tmp_path / "reg" / "1_animal" / "r.png", (512, 512), "animal")
    config = TrainConfig()
    config.dataset = DatasetParams(subsets=[
        SubsetParams(image_dir=str(tmp_path / "train"), kohya_layout=True, **subset_options),
        SubsetParams(image_dir=str(tmp_path / "reg"), kohya_layout=True, is_reg=True)])
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 3
    config.training.batch_size, config.training.gradient_accumulation_steps = 2, 2
    config.optimizer.type = OptimizerType.PRODIGY
    config.schedule.warmup_ratio = 0.5
    config.output.output_name = "kiln_cat"
    return config


def _metadata(config: TrainConfig, plan: DatasetPlan, **overrides) -> dict[str, str]:
    arguments = dict(epoch=2, step=5, session_id="1234", training_started_at=1_700_000_000.5,
                     training_finished_at=1_700_000_100.25, model_name="/models/v1-5-pruned.safetensors",
                     title="Kiln cat")
    arguments.update(overrides)
    return build_metadata(config, plan, family=SD1, **arguments)


@pytest.fixture
def config_and_plan(tmp_path):
    config = _config(tmp_path)
    return config, plan_dataset(config.dataset, config.training)


def test_every_section_4_key_is_there_as_a_string_and_json_values_parse(config_and_plan):
    meta = _metadata(*config_and_plan)
    assert [key for key in SECTION_4_KEYS if key not in meta] == []
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    for key in JSON_KEYS:
        json.loads(meta[key])


def test_fixed_values_are_spelled_as_sd_scripts_spells_them(config_and_plan):
    meta = _metadata(*config_and_plan)
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "1.0"
    assert meta["ss_network_args"] == "{}"
    assert meta["ss_enable_bucket"] == "True" and meta["ss_bucket_no_upscale"] == "False"
    assert meta["ss_unet_lr"] == "None"  # not set: sd-scripts writes str(None)
    assert meta["ss_lr_scheduler"] == "cosine" and meta["ss_mixed_precision"] == "fp16"
    assert meta["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    assert meta["ss_output_name"] == "kiln_cat"
    assert meta["ss_training_started_at"] == "1700000000.5"
    assert meta["ss_training_finished_at"] == "1700000100.25"
    assert (meta["ss_epoch"], meta["ss_steps"], meta["ss_session_id"]) == ("2", "5", "1234")


def test_numbers_come_from_the_plan(config_and_plan):
    config, plan = config_and_plan
    meta = _metadata(config, plan)
    assert meta["ss_num_train_images"] == "8"  # 2 x 3 + 1 x 2
    assert meta["ss_num_reg_images"] == "8"  # one reg image topped up to 8 repeats
    assert meta["ss_num_batches_per_epoch"] == str(plan.batches_per_epoch)
    assert meta["ss_num_epochs"] == "3"
    assert meta["ss_max_train_steps"] == str(plan.steps.max_train_steps)
    assert meta["ss_lr_warmup_steps"] == str(int(0.5 * plan.steps.max_train_steps))
    assert meta["ss_batch_size_per_device"] == "2" and meta["ss_total_batch_size"] == "4"


def test_optimizer_is_module_class_and_arguments(config_and_plan):
    meta = _metadata(*config_and_plan)
    assert meta["ss_optimizer"].startswith("prodigyopt.prodigy.Prodigy(")
    assert "betas=(0.9, 0.999)" in meta["ss_optimizer"] and "weight_decay=0.01" in meta["ss_optimizer"]


def test_locon_network_args_are_strings_as_sd_scripts_stores_them(config_and_plan):
    config, plan = config_and_plan
    config.network = NetworkParams(type=NetworkType.LOCON, dim=16, alpha=8.0, conv_dim=4, conv_alpha=1.0)
    assert json.loads(_metadata(config, plan)["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}


def test_dataset_dirs_bucket_info_and_tag_frequency(config_and_plan):
    config, plan = config_and_plan
    meta = _metadata(config, plan)
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_dog": {"n_repeats": 2, "img_count": 1},
                                                   "3_cat": {"n_repeats": 3, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_animal": {"n_repeats": 1, "img_count": 1}}
    tags = json.loads(meta["ss_tag_frequency"])
    assert tags["3_cat"] == {"cat": 3, "red": 1, "blue": 1}  # lower-cased, per image, repeats ignored
    assert tags["2_dog"] == {"dog": 1} and tags["1_animal"] == {"animal": 1}
    info = json.loads(meta["ss_bucket_info"])
    # Indices are places in the 17 predefined buckets of 512x512 (sorted), as sd-scripts numbers them.
    assert info["buckets"] == {"6": {"resolution": [384, 640], "count": 3},
                               "8": {"resolution": [512, 512], "count": 3 + 8},
                               "10": {"resolution": [640, 384], "count": 2}}
    assert info["mean_img_ar_error"] == pytest.approx(plan.mean_ar_error)


def test_no_upscale_buckets_are_numbered_in_sorted_order(tmp_path):
    config = _config(tmp_path)
    config.dataset.bucket_no_upscale = True
    plan = plan_dataset(config.dataset, config.training)
    info = bucket_info(plan)
    assert [tuple(b["resolution"]) for b in info["buckets"].values()] == sorted(plan.buckets)
    assert list(info["buckets"]) == [str(i) for i in range(len(plan.buckets))]


def test_tag_frequency_leaves_out_caption_prefix_and_suffix(tmp_path):
    config = _config(tmp_path, caption_prefix="kilnstyle", caption_suffix="best quality")
    plan = plan_dataset(config.dataset, config.training)
    assert tag_frequency(plan)["3_cat"] == {"cat": 3, "red": 1, "blue": 1}


def test_subset_options_become_sd_scripts_global_keys(tmp_path):
    config = _config(tmp_path, flip_aug=True, keep_tokens=2, shuffle_caption=True, caption_dropout_rate=0.1)
    meta = _metadata(config, plan_dataset(config.dataset, config.training))
    assert (meta["ss_flip_aug"], meta["ss_shuffle_caption"], meta["ss_keep_tokens"]) == ("True", "True", "2")
    assert meta["ss_caption_dropout_rate"] == "0.1"


def test_modelspec_keys(config_and_plan):
    config, plan = config_and_plan
    config.model.v_parameterization = True
    meta = _metadata(config, plan)
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.title"] == "Kiln cat" and meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.prediction_type"] == "v"
    assert meta["modelspec.date"].startswith("2023-11-1") and len(meta["modelspec.date"]) == 19


def test_the_demo_dataset_gives_complete_metadata():
    config = TrainConfig()
    config.dataset = DatasetParams(subsets=[SubsetParams(image_dir=str(resource_path("demo", "dataset")),
                                                         kohya_layout=True)])
    plan = plan_dataset(config.dataset, config.training)
    meta = _metadata(config, plan, training_finished_at=None)
    assert set(json.loads(meta["ss_tag_frequency"])) == {"2_kilnstyle bowl", "4_kilnstyle vase"}
    assert json.loads(meta["ss_tag_frequency"])["2_kilnstyle bowl"]["kilnstyle"] >= 1
    assert float(meta["ss_training_finished_at"]) > 1_700_000_000


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"lora_unet_a.lora_down.weight": torch.randn(4, 32, generator=g).half(),
            "lora_unet_a.lora_up.weight": torch.randn(32, 4, generator=g).half(),
            "lora_unet_a.alpha": torch.tensor(2.0).half()}


def test_saved_hash_is_the_sha256_of_the_tensor_bytes_after_the_header(tmp_path, config_and_plan):
    path = tmp_path / "out" / "lora.safetensors"
    path.parent.mkdir()
    meta = _metadata(*config_and_plan)
    returned = save_lora_file(path, _tensors(), meta)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert returned == hashlib.sha256(raw[8 + header_len:]).hexdigest()
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()
    assert stored["sshs_model_hash"] == returned
    assert stored["sshs_legacy_hash"] == hashlib.sha256(b"").hexdigest()[:8]  # file under 1 MiB
    assert {k: v for k, v in stored.items() if not k.startswith("sshs_")} == meta
    assert sorted(p.name for p in path.parent.iterdir()) == ["lora.safetensors"]  # no temporary left


def test_metadata_does_not_change_the_hash(tmp_path):
    tensors = _tensors()
    bare = save_lora_file(tmp_path / "a.safetensors", tensors, {})
    rich = save_lora_file(tmp_path / "b.safetensors", tensors, {"ss_a": "x" * 1000, "modelspec.title": "t"})
    assert bare == rich == model_hashes(tensors, {})[0]


def test_saving_replaces_an_existing_file(tmp_path):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"old")
    save_lora_file(path, _tensors(), {"ss_steps": "1"})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["ss_steps"] == "1"


def test_a_value_that_is_not_a_string_is_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="ss_steps"):
        save_lora_file(tmp_path / "x.safetensors", _tensors(), {"ss_steps": 5})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_fp8_base_weights_are_recorded_as_train_network_py_records_them(config_and_plan):
    config, plan = config_and_plan
    meta = _metadata(config, plan)
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"]) == ("False", "False")
    config.model.fp8_base_unet = True
    meta = _metadata(config, plan)
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"]) == ("False", "True")


def test_noise_and_loss_options_are_recorded_as_train_network_py_records_them(config_and_plan):
    config, plan = config_and_plan
    training = config.training
    training.noise_offset, training.adaptive_noise_scale = 0.05, 0.01
    training.multires_noise_iterations, training.multires_noise_discount = 6, 0.2
    training.ip_noise_gamma, training.ip_noise_gamma_random_strength = 0.1, True
    training.debiased_estimation_loss = True
    config.network.scale_weight_norms = 1.5
    meta = _metadata(config, plan)
    assert {key: meta[key] for key in (
        "ss_adaptive_noise_scale", "ss_multires_noise_iterations", "ss_multires_noise_discount", "ss_ip_noise_gamma",
        "ss_ip_noise_gamma_random_strength", "ss_debiased_estimation", "ss_scale_weight_norms")} == {
        "ss_adaptive_noise_scale": "0.01", "ss_multires_noise_iterations": "6", "ss_multires_noise_discount": "0.2",
        "ss_ip_noise_gamma": "0.1", "ss_ip_noise_gamma_random_strength": "True", "ss_debiased_estimation": "True",
        "ss_scale_weight_norms": "1.5"}
    training.debiased_estimation_loss = False
    assert _metadata(config, plan)["ss_debiased_estimation"] == "False"


def test_validation_settings_are_written_as_sd_scripts_spells_them(tmp_path):
    config = _config(tmp_path)
    meta = _metadata(config, plan_dataset(config.dataset, config.training))
    assert (meta["ss_num_validation_images"], meta["ss_validation_split"], meta["ss_validation_seed"],
            meta["ss_validate_every_n_steps"], meta["ss_max_validation_steps"]) == ("0", "0.0", "None", "None", "None")
    config.dataset.validation_split, config.dataset.validation_seed = 0.5, 7
    config.training.validate_every_n_steps, config.training.max_validation_steps = 10, 3
    plan = plan_dataset(config.dataset, config.training)
    meta = _metadata(config, plan)
    assert int(meta["ss_num_validation_images"]) == len(plan.validation) > 0
    assert (meta["ss_validation_split"], meta["ss_validation_seed"], meta["ss_validate_every_n_steps"],
            meta["ss_max_validation_steps"]) == ("0.5", "7", "10", "3")
