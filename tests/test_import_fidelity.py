"""Kohya import fidelity: LoRA_Easy_Training_Scripts' TOML, other model families refused,
Adafactor as sd-scripts builds it, keys without effect, keys set twice, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cli.main import main
from core.config.schema import NetworkType, OptimizerType
from core.kohya.import_config import ImportResult, KohyaImportError, import_kohya
from core.kohya.option_effects import what_it_does

# Modelled on the files LoRA_Easy_Training_Scripts saves: panels of args / dataset_args,
# the optimizer's and network's own arguments as nested tables, [[subsets]] at the top.
EASY_TOML = """\
[[subsets]]
caption_extension = ".txt"
image_dir = "/data/10_pottery"
name = "subset 1"
num_repeats = 10
shuffle_caption = true
keep_tokens = 1

[[subsets]]
image_dir = "/data/reg"
name = "regularisation"
num_repeats = 1
is_reg = true

[train_mode]
train_mode = "lora"

[noise_args]

[general_args.args]
pretrained_model_name_or_path = "/models/nai-fp16.safetensors"
mixed_precision = "bf16"
seed = 23
clip_skip = 2
max_data_loader_n_workers = 1
persistent_data_loader_workers = true
max_token_length = 225
max_train_epochs = 2

[general_args.dataset_args]
resolution = 768
batch_size = 2

[network_args.args]
network_dim = 8
network_alpha = 4.0

[optimizer_args.args]
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
learning_rate = 0.0001
warmup_ratio = 0.05

[saving_args.args]
output_dir = "/out"
output_name = "pottery"
save_every_n_epochs = 1

[bucket_args.dataset_args]
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024

[network_args.args.network_args]
conv_dim = 4
conv_alpha = 2

[optimizer_args.args.optimizer_args]
weight_decay = 0.1
betas = "0.9,0.99"
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _reasons(result: ImportResult) -> dict[str, str]:
    return {u.key: u.reason for u in result.unsupported + result.ignored}


# ---------------------------------------------------------------- LoRA_Easy_Training_Scripts


def test_an_easy_training_scripts_toml_maps_every_section(tmp_path):
    result = import_kohya([_write(tmp_path, "easy.toml", EASY_TOML)])
    c = result.config
    assert (c.network.dim, c.network.alpha, c.network.conv_dim) == (8, 4.0, 4)
    assert c.network.type is NetworkType.LOCON  # conv_dim in network_args: Kohya's LoCon
    assert (c.optimizer.type, c.optimizer.learning_rate, c.optimizer.weight_decay) == \
        (OptimizerType.ADAMW8BIT, 1e-4, 0.1)
    assert c.schedule.warmup_ratio == 0.05
    assert (c.training.seed, c.training.max_train_epochs, c.training.batch_size) == (23, 2, 2)
    assert (c.dataset.resolution, c.dataset.min_bucket_reso, c.dataset.max_bucket_reso) == ((768, 768), 256, 1024)
    assert (c.output.output_name, c.model.clip_skip) == ("pottery", 2)
    assert [(s.image_dir, s.num_repeats, s.is_reg) for s in c.dataset.subsets] == \
        [("/data/10_pottery", 10, False), ("/data/reg", 1, True)]
    assert c.dataset.subsets[0].keep_tokens == 1 and c.dataset.subsets[0].caption_extension == ".txt"
    assert result.sources == [(str(tmp_path / "easy.toml"), "LoRA_Easy_Training_Scripts TOML")]


def test_an_easy_training_scripts_report_names_keys_as_the_file_writes_them(tmp_path):
    result = import_kohya([_write(tmp_path, "easy.toml", EASY_TOML)])
    mapped = {m.key for m in result.mapped}
    assert {"network_args.args.network_dim", "bucket_args.dataset_args.min_bucket_reso",
            "optimizer_args.args.optimizer_args.weight_decay", "subsets[1].is_reg"} <= mapped
    reasons = _reasons(result)
    assert "label" in reasons["subsets[0].name"] and result.unsupported == []


def test_a_key_two_easy_sections_set_is_warned_about_naming_both_and_the_winner(tmp_path):
    text = EASY_TOML.replace('warmup_ratio = 0.05', 'warmup_ratio = 0.05\nmax_token_length = 150')
    result = import_kohya([_write(tmp_path, "easy.toml", text)])
    assert result.config.training.max_token_length == 150
    warning = next(w for w in result.warnings if "'max_token_length'" in w)
    assert "general_args.args.max_token_length = 225" in warning
    assert "optimizer_args.args.max_token_length = 150" in warning and "is used" in warning
    assert _reasons(result)["general_args.args.max_token_length"].startswith("optimizer_args.args")


def test_an_easy_lycoris_network_is_lycoris(tmp_path):
    text = EASY_TOML.replace("conv_alpha = 2", 'conv_alpha = 2\nalgo = "loha"')
    assert import_kohya([_write(tmp_path, "easy.toml", text)]).config.network.type is NetworkType.LOHA


def test_an_easy_config_for_another_training_mode_is_refused(tmp_path):
    text = EASY_TOML.replace('train_mode = "lora"', 'train_mode = "textual_inversion"')
    with pytest.raises(KohyaImportError, match="train_mode is 'textual_inversion'"):
        import_kohya([_write(tmp_path, "easy.toml", text)])


# ---------------------------------------------------------------- other families


@pytest.mark.parametrize(("changes", "family", "evidence"), [
    ({"flux1_checkbox": True}, "FLUX.1", "flux1_checkbox is on"),
    ({"sd3_checkbox": True}, "SD3", "sd3_checkbox is on"),
    ({"pretrained_model_name_or_path": "C:\\models\\flux1-dev.safetensors"}, "FLUX.1", "flux1-dev"),
    ({"pretrained_model_name_or_path": "/m/sd3.5_large.safetensors"}, "SD3", "sd3.5_large"),
])
def test_a_kohya_ss_config_of_another_family_is_refused_naming_it(tmp_path, changes, family, evidence):
    data = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "/m/v1-5.safetensors",
            "network_dim": 8, "flux1_checkbox": False, "sd3_checkbox": False, **changes}
    path = _write(tmp_path, "flux.json", json.dumps(data))
    with pytest.raises(KohyaImportError) as raised:
        import_kohya([path])
    assert f"a {family} config" in str(raised.value) and evidence in str(raised.value)
    assert "SD 1.x, SD 2.x and SDXL" in str(raised.value)


@pytest.mark.parametrize(("line", "family"), [
    ('ae = "/m/ae.safetensors"', "FLUX.1"),
    ('model_prediction_type = "raw"', "FLUX.1"),
    ('clip_g = "/m/clip_g.safetensors"', "SD3"),
    ('t5xxl = "/m/t5xxl_fp16.safetensors"', "FLUX.1 or SD3"),
])
def test_an_sd_scripts_config_with_a_flux_or_sd3_argument_is_refused(tmp_path, line, family):
    text = f'pretrained_model_name_or_path = "/m/model.safetensors"\nnetwork_dim = 8\n{line}\n'
    with pytest.raises(KohyaImportError, match=f"a {family} config"):
        import_kohya([_write(tmp_path, "config.toml", text)])


def test_kohya_ss_flux_and_sd3_fields_at_their_defaults_are_kohyas_and_ignored(tmp_path):
    # kohya_ss writes its FLUX.1 and SD3 fields into every config, switched off or not.
    data = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "/m/v1-5.safetensors",
            "flux1_checkbox": False, "sd3_checkbox": False, "t5xxl": "", "weighting_scheme": "logit_normal",
            "logit_std": 1, "mode_scale": 1.29, "t5xxl_dtype": "bf16", "train_double_block_indices": "all",
            "discrete_flow_shift": 3.0, "model_prediction_type": "sigma_scaled"}
    result = import_kohya([_write(tmp_path, "sd15.json", json.dumps(data))])
    assert result.unsupported == []
    reasons = _reasons(result)
    assert reasons["weighting_scheme"] == reasons["mode_scale"] == "a kohya_ss SD3 field, only used for SD3 models"
    assert reasons["discrete_flow_shift"] == "a kohya_ss FLUX.1 field, only used for FLUX.1 models"


# ---------------------------------------------------------------- Adafactor


def test_adafactor_without_optimizer_args_gets_sd_scripts_relative_step(tmp_path):
    text = 'optimizer_type = "Adafactor"\nlearning_rate = 1e-4\nnetwork_dim = 8\n'
    result = import_kohya([_write(tmp_path, "config.toml", text)])
    assert result.config.optimizer.extra_args == {"relative_step": True, "scale_parameter": True}
    assert any("relative_step=True sets its own step size" in w for w in result.warnings)


def test_adafactor_keeps_what_its_optimizer_args_say_and_warmup_init_forces_relative_step(tmp_path):
    text = ('optimizer_type = "Adafactor"\nnetwork_dim = 8\n'
            'optimizer_args = ["relative_step=False", "warmup_init=True"]\n')
    extra = import_kohya([_write(tmp_path, "config.toml", text)]).config.optimizer.extra_args
    assert extra == {"relative_step": True, "warmup_init": True, "scale_parameter": True}
    text = 'optimizer_type = "Adafactor"\nnetwork_dim = 8\noptimizer_args = ["relative_step=False"]\n'
    extra = import_kohya([_write(tmp_path, "config.toml", text)]).config.optimizer.extra_args
    assert extra == {"relative_step": False, "scale_parameter": True}


def test_an_imported_relative_step_adafactor_trains_at_its_own_step_size():
    from core.config.schema import OptimizerParams
    from core.training.optim import ParamGroup, build_optimizer

    opt = OptimizerParams(type=OptimizerType.ADAFACTOR, extra_args={"relative_step": True, "scale_parameter": True})
    weight = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = build_optimizer([ParamGroup("unet", [weight], 1e-4)], opt)
    weight.grad = torch.ones(4, 4)
    optimizer.step()
    # Adafactor's first relative step is min(1e-2, 1/sqrt(1)) times the weight's RMS (1): 1e-2, not 1e-4.
    assert torch.allclose(weight.detach(), torch.full((4, 4), 0.99), atol=1e-4)


# ---------------------------------------------------------------- keys without effect, keys set twice


@pytest.mark.parametrize(("key", "value"), [
    ("model_list", "runwayml/stable-diffusion-v1-5"), ("persistent_data_loader_workers", True),
    ("lowram", True), ("dataset_repeats", 1), ("log_tracker_name", "mine"), ("huggingface_repo_id", "me/x"),
    ("num_cpu_threads_per_process", 8)])
def test_keys_with_no_effect_on_training_are_ignored_not_unsupported(tmp_path, key, value):
    data = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "/m/v1-5.safetensors", key: value}
    result = import_kohya([_write(tmp_path, "k.json", json.dumps(data))])
    assert key in {i.key for i in result.ignored} and key not in {u.key for u in result.unsupported}


def test_a_dataset_repeated_more_than_once_is_still_not_supported(tmp_path):
    data = {"LoRA_type": "Standard", "dataset_repeats": 3}
    result = import_kohya([_write(tmp_path, "k.json", json.dumps(data))])
    assert "dataset_repeats" in {u.key for u in result.unsupported}


def test_a_json_key_set_twice_is_warned_about_by_key(tmp_path):
    path = _write(tmp_path, "twice.json", '{"LoRA_type": "Standard", "network_dim": 8, "network_dim": 16}')
    result = import_kohya([path])
    assert result.config.network.dim == 16
    assert any("'network_dim' is set twice (8, then 16)" in w for w in result.warnings)


def test_a_toml_key_set_twice_is_refused_saying_so(tmp_path):
    with pytest.raises(KohyaImportError, match="a key is set twice"):
        import_kohya([_write(tmp_path, "twice.toml", "network_dim = 8\nnetwork_dim = 16\n")])


def test_logging_dir_is_kept_as_tensorboard_logging(tmp_path):
    result = import_kohya([_write(tmp_path, "c.toml", 'network_dim = 8\nlogging_dir = "/logs"\n')])
    assert result.config.logging.tensorboard
    assert "logging_dir" in {m.key for m in result.mapped}


# ---------------------------------------------------------------- the report


def test_the_report_ends_with_the_counts_and_says_what_unsupported_keys_did(tmp_path, capsys):
    data = {"LoRA_type": "Standard", "network_dim": 8, "color_aug": True, "model_list": "custom-x",
            "scale_weight_norms": 1.0}
    path = _write(tmp_path, "k.json", json.dumps(data))
    result = import_kohya([path])
    assert main(["import-kohya", str(path), "-o", str(tmp_path / "p.toml")]) == 0
    err = capsys.readouterr().err.rstrip("\n").splitlines()
    assert err[-1] == (f"{len(result.mapped)} mapped, {len(result.ignored)} ignored (no effect), "
                       f"{len(result.unsupported)} not supported")
    for item in result.unsupported:
        line = next(i for i, text in enumerate(err) if text.lstrip().startswith(item.key))
        assert err[line + 1].strip() == f"would have: {what_it_does(item.key)}"


def test_every_unsupported_reason_group_key_has_a_description():
    from core.kohya import import_keys as keys

    missing = [key for key in keys.UNSUPPORTED if not what_it_does(key)
               and not keys.UNSUPPORTED[key].startswith(("FLUX option", "SD3 option"))]
    assert missing == []
    assert what_it_does("network_args.rank_dropout") == what_it_does("rank_dropout") != ""
