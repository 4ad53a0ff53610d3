"""Bad input found before training starts, each named with its field and what to do:
wrong base models, output folders that cannot hold the run, bad sample prompts, datasets
without a usable image, and paths with spaces and non-ASCII characters that must work."""

import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.models import loaders, sd1
from core.training import validation
from core.config.schema import (DEMO_MODEL, Duration, NetworkType, SavePrecision, SubsetParams, TrainConfig)
from core.data.scan import scan_dataset, unusable_dataset_message
from core.config.presets import load_preset, save_preset
from core.training.validation import ERROR, WARNING, estimate_output_bytes, validate

UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
CLIP_POS = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
Usage = namedtuple("Usage", "total used free")


def _config(tmp_path: Path) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    config.output.output_dir = str(tmp_path / "runs")
    return config


def _problems(config: TrainConfig, field: str, **kwargs) -> list[validation.Problem]:
    return [p for p in validate(config, **kwargs) if p.path == field]


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float16)


# ---------------------------------------------------------------- the base model


@pytest.mark.parametrize("name, tensors, expected", [
    ("xl.safetensors", {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight":
                        _zeros(4, 8), UNET_IN: _zeros(8, 4, 3, 3)},
     "xl.safetensors has no text encoder 2 (OpenCLIP bigG) weights"),
    ("v2.safetensors", {"cond_stage_model.model.token_embedding.weight": _zeros(4, 8), UNET_IN: _zeros(8, 4, 3, 3)},
     "v2.safetensors is an SD 2.x checkpoint"),
    ("style.safetensors", {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": _zeros(4, 32),
                           "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": _zeros(32, 4)},
     "style.safetensors is a LoRA, not a base model: choose it under network.init_weights"),
    ("inpaint.safetensors", {UNET_IN: _zeros(8, 9, 3, 3), CLIP_POS: _zeros(77, 8)},
     "inpaint.safetensors is an inpainting or instruct-pix2pix model (9 input channels)"),
    ("embedding.safetensors", {"emb_params": _zeros(2, 768)},
     "embedding.safetensors does not look like a Stable Diffusion 1.x checkpoint"),
])
def test_the_wrong_kind_of_model_file_is_named_before_training(tmp_path, name, tensors, expected):
    save_file(tensors, str(tmp_path / name))
    config = _config(tmp_path)
    config.model.base_model = str(tmp_path / name)
    [problem] = _problems(config, "model.base_model")
    assert problem.severity == ERROR and problem.message.startswith(expected)


@pytest.mark.parametrize("name, content, expected", [
    ("notes.safetensors", b"these are my training notes, not a model" * 4,
     "notes.safetensors is damaged or incomplete (its header is cut off, or it is not a .safetensors file at all); "
     "download it again"),
    ("model.ckpt", b"PK? no, plain text", "model.ckpt is damaged or incomplete (it is not a PyTorch checkpoint)"),
    ("weights.bin", bytes(range(256)) * 4, "weights.bin is not a model file LoRA Kiln can read; choose a "
                                           ".safetensors, .ckpt, .pt, .pth checkpoint or a diffusers folder"),
    ("model.txt", b"hello", "model.txt is not a model file LoRA Kiln can read"),
])
def test_files_that_are_not_models_are_named_before_training(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    config = _config(tmp_path)
    config.model.base_model = str(tmp_path / name)
    [problem] = _problems(config, "model.base_model")
    assert problem.message == expected or problem.message.startswith(expected)


def test_a_truncated_safetensors_model_is_named_with_what_is_missing(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({UNET_IN: _zeros(32, 4, 3, 3), CLIP_POS: _zeros(77, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    config = _config(tmp_path)
    config.model.base_model = str(path)
    [problem] = _problems(config, "model.base_model")
    assert problem.message == ("cut.safetensors is damaged or incomplete (100 bytes of tensor data are missing "
                               "at the end); download it again")


def test_a_missing_model_and_an_sdxl_folder_under_sd1_are_named(tmp_path):
    config = _config(tmp_path)
    config.model.base_model = str(tmp_path / "gone.safetensors")
    assert [p.message for p in _problems(config, "model.base_model")] == [
        f"'{tmp_path / 'gone.safetensors'}' does not exist; choose a checkpoint file or diffusers folder of a model LoRA Kiln "
        "trains (SD 1.x or SDXL)"]
    folder = tmp_path / "sdxl-base"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}), "utf-8")
    config.model.base_model, config.model.family = str(folder), "sd1"
    assert [p.message for p in _problems(config, "model.family")] == [
        "sdxl-base is an SDXL model, but model.family is SD 1.x; set model.family to sdxl or auto"]


def test_a_model_file_header_is_read_once_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": _zeros(4, 8)}, str(path))
    reads = []
    real = loaders.check_base_model
    monkeypatch.setattr(loaders, "check_base_model", lambda p: (reads.append(p), real(p))[1])
    validation._base_model_problem.cache_clear()
    config = _config(tmp_path)
    config.model.base_model = str(path)
    for _ in range(3):
        validate(config)
    assert len(reads) == 1
    save_file({"lora_unet_x.lora_down.weight": _zeros(4, 16)}, str(path))
    os.utime(path, ns=(1, 1))  # a different time, as a replaced file has
    validate(config)
    assert len(reads) == 2


# ---------------------------------------------------------------- the output folder


def test_an_output_folder_that_cannot_be_created_or_written_is_an_error(tmp_path, monkeypatch):
    config = _config(tmp_path)
    (tmp_path / "a-file.txt").write_text("x")
    config.output.output_dir = str(tmp_path / "a-file.txt" / "runs")
    [problem] = _problems(config, "output.output_dir")
    assert problem.message == (f"'{config.output.output_dir}' cannot be created: '{tmp_path / 'a-file.txt'}' "
                               "is a file; choose another folder")
    # The tests may run as root, which writes anywhere: the permission answer is replaced.
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(validation.os, "access", lambda path, mode: Path(path) != locked)
    config.output.output_dir = str(locked / "new" / "runs")
    [problem] = _problems(config, "output.output_dir")
    assert problem.message == f"'{locked / 'new' / 'runs'}' cannot be created ('{locked}' is not writable); " \
                              "choose another folder"
    config.output.output_dir = str(locked)
    [problem] = _problems(config, "output.output_dir")
    assert problem.message == f"'{locked}' is not writable; choose another folder"


def test_a_full_disk_is_an_error_before_training_and_a_nearly_full_one_a_warning(tmp_path, monkeypatch):
    config = _config(tmp_path)
    config.network.dim = 128
    need, _ = estimate_output_bytes(config)
    for free, severity in ((need - 1, ERROR), (need + 2**20, WARNING), (need + 2 * 2**30, None)):
        monkeypatch.setattr(validation.shutil, "disk_usage", lambda path, free=free: Usage(10**13, 0, free))
        problems = _problems(config, "output.output_dir")
        assert [p.severity for p in problems] == ([severity] if severity else [])
    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: Usage(10**13, 0, 50 * 2**20))
    [problem] = _problems(config, "output.output_dir")
    assert problem.message.startswith(f"only 50.0 MB free for '{config.output.output_dir}'; this run writes "
                                      "about 160.0 MB (1 LoRA file of 144.0 MB)")
    assert problem.message.endswith("free some space or choose a folder on another disk")


def test_the_default_runs_folder_is_checked_when_no_output_folder_is_set(tmp_path, monkeypatch):
    config = _config(tmp_path)
    config.output.output_dir = ""
    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: Usage(10**13, 0, 1000))
    [problem] = _problems(config, "output.output_dir")
    assert problem.severity == ERROR and "LoRA Kiln's runs folder (" in problem.message


def test_the_estimate_grows_with_the_dim_the_saves_and_the_state():
    config = TrainConfig()
    config.training.duration, config.training.max_train_steps = Duration.STEPS, 1000
    lora_only, _ = estimate_output_bytes(config)
    # dim 8 in fp16: 8 x 589,824 weights x 2 bytes, plus 16 MB of logs.
    assert lora_only == 8 * sd1.LORA_PER_DIM * 2 + validation.LOG_BYTES
    config.network.dim = 16
    assert estimate_output_bytes(config)[0] - validation.LOG_BYTES == 2 * (lora_only - validation.LOG_BYTES)
    config.output.save_every_n_steps = 100  # 9 checkpoints and the final LoRA, with state files
    ten, parts = estimate_output_bytes(config)
    assert parts.startswith("10 LoRA files of ") and "training state" in parts
    config.output.keep_last_n = 2  # pruning keeps at most 3 while a new one is written
    assert estimate_output_bytes(config)[1].startswith("4 LoRA files of ")
    config.output.save_precision = SavePrecision.FLOAT
    config.network.type = NetworkType.LOCON
    assert estimate_output_bytes(config)[0] > ten


@pytest.mark.slow  # imports diffusers and builds two models on the meta device: about 5 s
def test_the_per_dim_weight_counts_match_the_sd15_architecture():
    # Recount what estimate_output_bytes assumes, on the meta device (no memory, no weights).
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from torch import nn
    from transformers import CLIPTextConfig, CLIPTextModel

    from core.config.schema import NetworkParams
    from core.models.lora import clip_targets, unet_targets
    from core.models.sd15_files import sd15_config_dir

    folder = sd15_config_dir()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder), subfolder="unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))

    def per_rank(model, targets) -> tuple[int, int]:
        flat = conv = 0
        for path in targets:
            layer = model.get_submodule(path)
            if isinstance(layer, nn.Linear):
                flat += layer.in_features + layer.out_features
            elif tuple(layer.kernel_size) == (1, 1):
                flat += layer.in_channels + layer.out_channels
            else:
                conv += layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels
        return flat, conv

    lora, locon = NetworkParams(), NetworkParams(type=NetworkType.LOCON)
    te_flat, _ = per_rank(text_encoder, clip_targets(text_encoder, lora))
    unet_flat, _ = per_rank(unet, unet_targets(unet, lora))
    locon_flat, locon_conv = per_rank(unet, unet_targets(unet, locon))
    assert unet_flat + te_flat == sd1.LORA_PER_DIM
    assert locon_flat - unet_flat == sd1.LOCON_EXTRA_PER_DIM
    assert locon_conv == sd1.LOCON_PER_CONV_DIM


# ---------------------------------------------------------------- sample prompts


@pytest.mark.parametrize("prompts, expected", [
    ("a cat --w 512\n# a note\na dog --q 3", "sample prompt line 3: unknown option --q"),
    ("a cat --w 500", "sample prompt line 1: --w 500 is not a multiple of 8"),
    ("a cat --l nan", "sample prompt line 1: --l needs a finite number, got 'nan'"),
    ("a cat --s 5000", "sample prompt line 1: --s (steps): 5000 is above the maximum of 1000"),
    ("a cat --ss heun9", "sample prompt line 1: --ss heun9 is not a known sampler"),
    ("--w 512", "sample prompt line 1: the prompt before the options is empty"),
])
def test_bad_sample_prompt_options_are_errors_before_training(tmp_path, prompts, expected):
    config = _config(tmp_path)
    config.sampling.prompts = prompts
    [problem] = _problems(config, "sampling.prompts")
    assert problem.severity == ERROR and problem.message.startswith(expected)
    assert problem.message.endswith("; fix that line")


def test_good_sample_prompts_pass(tmp_path):
    config = _config(tmp_path)
    config.sampling.prompts = "a cat --w 512 --h 768 --s 20 --l 7 --d 3 --n blurry --ss euler_a\n\n# off\nsecond"
    assert _problems(config, "sampling.prompts") == []


# ---------------------------------------------------------------- the dataset


def test_a_dataset_with_no_usable_image_names_every_broken_file(tmp_path):
    folder = tmp_path / "set" / "3_cat"
    folder.mkdir(parents=True)
    (folder / "a.png").write_text("not an image")
    (folder / "b.jpg").write_bytes(b"")
    config = _config(tmp_path)
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path / "set"), kohya_layout=True)]
    result = scan_dataset(config.dataset)
    assert result.images == []
    message = unusable_dataset_message(result.skipped, result.warnings)
    assert message == (f"dataset.subsets: no usable images: 2 files skipped ({folder / 'a.png'}: not a valid PNG "
                       f"file; {folder / 'b.jpg'}: empty file (0 bytes)); replace or remove the broken files, "
                       "or choose another folder")
    assert f"{folder}: none of its 2 images can be used" in result.warnings


def test_a_run_on_a_dataset_of_broken_files_fails_naming_them(tmp_path):
    from core.training.engine import Trainer
    from core.training.events import Failed, ListSink
    from tests.engine_fixtures import tiny_config

    config = tiny_config(tmp_path, steps=2)
    folder = Path(config.dataset.subsets[0].image_dir) / "2_kiln"
    for image in folder.glob("*.png"):
        image.write_bytes(b"")  # every image empty: nothing is left to train on
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Failed) and result.kind == "data"
    assert result.summary.startswith("dataset.subsets: no usable images: 5 files skipped (")
    assert f"{folder / 'img0.png'}: empty file (0 bytes)" in result.summary


def test_an_empty_dataset_says_which_images_to_add(tmp_path):
    (tmp_path / "empty").mkdir()
    config = _config(tmp_path)
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path / "empty"))]
    result = scan_dataset(config.dataset)
    message = unusable_dataset_message(result.skipped, result.warnings)
    assert message.startswith(f"dataset.subsets: no images to train on ({tmp_path / 'empty'}: no images found")
    assert message.endswith("add .png .jpg .jpeg .webp or .bmp images to the folders")


def test_many_broken_files_are_summarised(tmp_path):
    for i in range(8):
        (tmp_path / f"{i}.png").write_text("x")
    config = _config(tmp_path)
    result = scan_dataset(config.dataset)
    assert unusable_dataset_message(result.skipped, result.warnings).count("not a valid PNG file") == 5
    assert "; and 3 more);" in unusable_dataset_message(result.skipped, result.warnings)


# ---------------------------------------------------------------- spaces and non-ASCII characters


def test_a_run_in_folders_with_spaces_and_non_ascii_names_trains_and_saves(tmp_path):
    from core.training.engine import Trainer
    from core.training.events import Finished
    from tests.engine_fixtures import tiny_config

    base = tmp_path / "my data" / "ñandú 画像"
    config = tiny_config(base, steps=2)
    data = Path(config.dataset.subsets[0].image_dir)
    for caption in data.rglob("*.txt"):  # captions in several scripts, as taggers write them
        caption.write_text("ñandú, 画像, café au lait, Ελληνικά", "utf-8")
    (data / "2_kiln").rename(data / "2_ñandú 画像")
    config.output.output_dir = str(tmp_path / "salida ñandú" / "出力 runs")
    config.output.output_name = "ñandú lora"
    preset = tmp_path / "my data" / "préset ñ.toml"
    save_preset(config, preset)
    config = load_preset(preset).config  # the paths survive a preset file too
    assert [p for p in validate(config) if p.severity == ERROR] == []
    events = []
    result = Trainer(config, type("Sink", (), {"emit": staticmethod(events.append)})()).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    lora = Path(result.lora_path)
    assert lora.is_file() and lora.name == "ñandú lora.safetensors"
    assert lora.parent.parent == Path(config.output.output_dir)
    from safetensors import safe_open

    with safe_open(str(lora), "np") as handle:
        frequency = json.loads(handle.metadata()["ss_tag_frequency"])
    assert frequency == {"2_ñandú 画像": {"ñandú": 5, "画像": 5, "café au lait": 5, "ελληνικά": 5}}
    shutil.rmtree(tmp_path / "salida ñandú")
