"""The shipped SD 1.5 config folder and CLIP tokenizer load offline and have the real shapes."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers are imported anywhere

import pytest
import torch

from core.models.sd15_files import (
    BOS_TOKEN_ID,
    CLIP_MAX_LENGTH,
    EOS_TOKEN_ID,
    load_tokenizer,
    sd15_config_dir,
    tokenizer_dir,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _read_json(*parts: str) -> dict:
    return json.loads(sd15_config_dir().joinpath(*parts).read_text(encoding="utf-8"))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- tokenizer -------------------------------------------------------------------------


def test_tokenizer_matches_clip_ids(tokenizer):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == CLIP_MAX_LENGTH
    assert tokenizer.bos_token_id == BOS_TOKEN_ID
    assert tokenizer.eos_token_id == EOS_TOKEN_ID
    assert tokenizer.pad_token_id == EOS_TOKEN_ID


def test_tokenizer_pads_and_truncates_to_77(tokenizer):
    short = tokenizer(
        "a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True,
    ).input_ids
    assert len(short) == 77
    assert short[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert set(short[7:]) == {EOS_TOKEN_ID}

    long = tokenizer(
        "photo " * 200, padding="max_length", max_length=tokenizer.model_max_length,
        truncation=True,
    ).input_ids
    assert len(long) == 77
    assert long[0] == BOS_TOKEN_ID and long[-1] == EOS_TOKEN_ID
    assert set(long[1:-1]) == {1125}


def test_tokenizer_round_trips_a_caption(tokenizer):
    text = "photo of sks dog, best quality"
    ids = tokenizer(text).input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[1:-1] == ["photo</w>", "of</w>", "sks</w>", "dog</w>", ",</w>", "best</w>", "quality</w>"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ,", ",") == text
    assert tokenizer(decoded).input_ids == ids  # re-encoding the decoded text is stable
    # CLIP lower-cases and collapses whitespace
    assert tokenizer("A  PHOTO of a Cat").input_ids == tokenizer("a photo of a cat").input_ids


def test_vocab_and_merges_sizes():
    vocab = json.loads((tokenizer_dir() / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["!"] == 0 and vocab["!</w>"] == 256
    lines = (tokenizer_dir() / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version: 0.2")
    merges = lines[1:]
    assert len(merges) == 48894
    assert all(len(m.split(" ")) == 2 for m in merges)


def test_load_tokenizer_from_explicit_folder(tmp_path):
    explicit = load_tokenizer(tokenizer_dir())
    assert explicit("a cat").input_ids == [49406, 320, 2368, 49407]
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)


# --- model configs ---------------------------------------------------------------------


def test_unet_has_sd15_size():
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(str(sd15_config_dir()), subfolder="unet")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    n = _count(unet)
    assert 859_000_000 < n < 860_000_000, n


def test_text_encoder_has_sd15_size():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(
        str(sd15_config_dir()), subfolder="text_encoder", local_files_only=True
    )
    assert config.hidden_size == 768 and config.num_hidden_layers == 12
    assert config.hidden_act == "quick_gelu" and config.vocab_size == 49408
    with torch.device("meta"):
        model = CLIPTextModel(config)
    n = _count(model)
    assert 123_000_000 < n < 123_100_000, n


def test_vae_has_sd15_size():
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(str(sd15_config_dir()), subfolder="vae")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    n = _count(vae)
    assert 83_600_000 < n < 83_700_000, n


def test_pipeline_and_scheduler_configs_load_offline():
    from diffusers import DiffusionPipeline, PNDMScheduler

    index = DiffusionPipeline.load_config(str(sd15_config_dir()))
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["requires_safety_checker"] is False
    assert list(index["safety_checker"]) == [None, None]
    assert list(index["feature_extractor"]) == [None, None]
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert index[name][0] in ("diffusers", "transformers"), name

    scheduler = PNDMScheduler.from_pretrained(str(sd15_config_dir()), subfolder="scheduler")
    assert scheduler.config.num_train_timesteps == 1000
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.steps_offset == 1
    assert scheduler.config.skip_prk_steps is True
    assert scheduler.config.set_alpha_to_one is False
    # SD 1.5's final cumulative alpha, a fingerprint of beta_start/beta_end/scaled_linear
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(0.0047, abs=1e-4)


def test_config_files_are_the_expected_ones():
    unet = _read_json("unet", "config.json")
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["cross_attention_dim"] == 768 and unet["attention_head_dim"] == 8
    vae = _read_json("vae", "config.json")
    assert vae["latent_channels"] == 4 and vae["block_out_channels"] == [128, 256, 512, 512]
    text = _read_json("text_encoder", "config.json")
    assert text["max_position_embeddings"] == 77 and text["projection_dim"] == 768
    # no weights are shipped
    assert not list(sd15_config_dir().rglob("*.safetensors"))
    assert not list(sd15_config_dir().rglob("*.bin"))
