"""Kohya's LoRA file layout: names, shapes, alpha, and loading it back (ours and diffusers')."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from core.config.schema import NetworkParams, NetworkType
from core.kohya.lora_format import (KohyaFormatError, describe_lora, ensure_family, load_kohya_into, read_kohya_file,
                                    to_kohya_state_dict)
from core.kohya.metadata import save_lora_file
from core.models.lora import LoraHandles, clip_targets, unet_targets
from core.models.sd1 import FAMILY as SD1
from core.models.sd15_files import load_tokenizer, sd15_config_dir
from tests.tiny_sd import (sd1_attach, sd15_text_encoder_on_meta, sd15_unet_on_meta, tiny_text_encoder, tiny_unet,
                           tiny_vae)

LORA = NetworkParams(type=NetworkType.LORA, dim=4, alpha=2.0)
LOCON = NetworkParams(type=NetworkType.LOCON, dim=4, alpha=2.0, conv_dim=2, conv_alpha=3.0)
SUFFIXES = ("proj_in", "proj_out") + tuple(
    f"transformer_blocks_0_{a}_{m}" for a in ("attn1", "attn2") for m in ("to_q", "to_k", "to_v", "to_out_0")
) + ("transformer_blocks_0_ff_net_0_proj", "transformer_blocks_0_ff_net_2")


def _expected_sd15_names() -> set[str]:
    """The 264 Kohya names of an SD 1.5 LoRA, written out from the architecture."""
    blocks = [f"down_blocks_{b}_attentions_{a}" for b in range(3) for a in range(2)]
    blocks += ["mid_block_attentions_0"]
    blocks += [f"up_blocks_{b}_attentions_{a}" for b in range(1, 4) for a in range(3)]
    names = {f"lora_unet_{block}_{suffix}" for block in blocks for suffix in SUFFIXES}
    names |= {f"lora_te_text_model_encoder_layers_{i}_{m}" for i in range(12)
              for m in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                        "mlp_fc1", "mlp_fc2")}
    return names


def _trained(network: NetworkParams, seed: int = 0) -> LoraHandles:
    """Tiny models with LoRA whose weights are random (as if trained), base weights seeded."""
    handles = sd1_attach(tiny_unet(0), tiny_text_encoder(1), network)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in handles.params(("unet",)) + handles.params(("text_encoder",)):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return handles


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 49406, (2, 77), generator=g)
    return ids, torch.randn(2, 4, 8, 8, generator=g), torch.tensor([5, 640])


def _outputs(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    ids, sample, t = _inputs()
    with torch.no_grad():
        context = text_encoder(ids)[0]
        return context, unet(sample, t, encoder_hidden_states=context).sample


@contextmanager
def _library_messages() -> Iterator[list[str]]:
    """Every log record and warning diffusers, transformers and peft emit inside the block.

    diffusers and transformers log through their own handlers (not to pytest's caplog),
    so a handler is put on their loggers directly.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(w.message) for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _pipeline_with(path: str):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    scheduler = PNDMScheduler.from_pretrained(sd15_config_dir(), subfolder="scheduler", local_files_only=True)
    pipe = StableDiffusionPipeline(vae=tiny_vae(2), text_encoder=tiny_text_encoder(1), tokenizer=load_tokenizer(),
                                   unet=tiny_unet(0), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with _library_messages() as messages:
        pipe.load_lora_weights(path)
    return pipe, messages


def test_kohya_key_replaces_dots_and_puts_text_model_in_text_encoder_names():
    assert SD1.kohya_name("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") == \
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    # transformers 5 names the layer without "text_model."; older versions with it.
    assert SD1.kohya_name("text_encoder", "encoder.layers.0.mlp.fc1") == "lora_te_text_model_encoder_layers_0_mlp_fc1"
    assert SD1.kohya_name("text_encoder", "text_model.encoder.layers.0.mlp.fc1") == \
        "lora_te_text_model_encoder_layers_0_mlp_fc1"


def test_full_sd15_gives_exactly_kohyas_264_module_names():
    network = NetworkParams()
    names = {SD1.kohya_name("unet", p) for p in unet_targets(sd15_unet_on_meta(), network)}
    names |= {SD1.kohya_name("text_encoder", p) for p in clip_targets(sd15_text_encoder_on_meta(), network)}
    assert len(names) == 264
    assert names == _expected_sd15_names()
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1" in names


def test_export_has_kohyas_tensors_shapes_and_the_real_alpha():
    tensors = to_kohya_state_dict(_trained(LOCON), SD1, torch.float16)
    assert all(t.dtype == torch.float16 and t.is_contiguous() and t.device.type == "cpu" for t in tensors.values())
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    assert tensors[f"{q}.lora_down.weight"].shape == (4, 32)  # [r, in]
    assert tensors[f"{q}.lora_up.weight"].shape == (32, 4)  # [out, r]
    assert tensors[f"{q}.alpha"].shape == () and tensors[f"{q}.alpha"].item() == 2.0
    conv = "lora_unet_down_blocks_2_resnets_0_conv1"  # 32 -> 64 channels
    assert tensors[f"{conv}.lora_down.weight"].shape == (2, 32, 3, 3)  # [r, in, k, k]
    assert tensors[f"{conv}.lora_up.weight"].shape == (64, 2, 1, 1)  # [out, r, 1, 1]
    assert tensors[f"{conv}.alpha"].item() == 3.0
    proj = "lora_unet_mid_block_attentions_0_proj_in"  # 1x1 convolution in SD 1.x
    assert tensors[f"{proj}.lora_down.weight"].shape == (4, 64, 1, 1)
    assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj.alpha" in tensors
    assert not any(k.startswith("lora_te1_") for k in tensors)


def test_exported_tensors_do_not_share_memory_with_the_live_weights():
    handles = _trained(LORA)
    tensors = to_kohya_state_dict(handles, SD1, torch.float32)
    before = {k: v.clone() for k, v in tensors.items()}
    with torch.no_grad():
        for p in handles.params(("unet",)):
            p.add_(1.0)
    assert all(torch.equal(before[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize("network", [LORA, LOCON], ids=["LoRA", "LoCon"])
def test_diffusers_loads_our_file_and_reproduces_the_trained_outputs(tmp_path, network):
    # The acceptance test: a front end applying the file to the untouched base model gets
    # the model we trained, alpha != rank included, with every key used.
    handles = _trained(network)
    path = tmp_path / "lora.safetensors"
    save_lora_file(path, to_kohya_state_dict(handles, SD1, torch.float32), {"ss_network_module": "networks.lora"})
    pipe, messages = _pipeline_with(str(path))
    unexpected = [m for m in messages if "unexpected" in m.lower() or "not found" in m.lower()
                  or "renamed" in m.lower()]
    assert unexpected == []
    trained_context, trained_unet = _outputs(handles.models["unet"], handles.models["text_encoder"])
    base_context, base_unet = _outputs(tiny_unet(0), tiny_text_encoder(1))
    loaded_context, loaded_unet = _outputs(pipe.unet, pipe.text_encoder)
    assert not torch.allclose(trained_context, base_context, atol=1e-3)  # the LoRA does something
    assert not torch.allclose(trained_unet, base_unet, atol=1e-3)
    assert torch.allclose(loaded_context, trained_context, atol=1e-5)
    assert torch.allclose(loaded_unet, trained_unet, atol=1e-5)


def test_the_unexpected_key_check_does_catch_diffusers_complaints(tmp_path):
    # Control for the test above: a module the model lacks makes diffusers say so.
    tensors = to_kohya_state_dict(_trained(LORA), SD1, torch.float32)
    bogus = "lora_unet_down_blocks_0_attentions_5_proj_in"
    tensors[f"{bogus}.lora_down.weight"] = torch.zeros(4, 32, 1, 1)
    tensors[f"{bogus}.lora_up.weight"] = torch.zeros(32, 4, 1, 1)
    tensors[f"{bogus}.alpha"] = torch.tensor(2.0)
    save_lora_file(tmp_path / "bad.safetensors", tensors, {})
    _, messages = _pipeline_with(str(tmp_path / "bad.safetensors"))
    assert any("unexpected" in m.lower() for m in messages)


@pytest.mark.parametrize("network", [LORA, LOCON], ids=["LoRA", "LoCon"])
def test_load_kohya_into_fresh_models_reproduces_the_outputs(tmp_path, network):
    handles = _trained(network)
    save_lora_file(tmp_path / "lora.safetensors", to_kohya_state_dict(handles, SD1, torch.float32), {})
    tensors, _ = read_kohya_file(tmp_path / "lora.safetensors")
    fresh = sd1_attach(tiny_unet(0), tiny_text_encoder(1), network)
    report = load_kohya_into(fresh, SD1, tensors)
    assert report.loaded == len(fresh.targets["unet"]) + len(fresh.targets["text_encoder"])
    assert report.missing == [] and report.unexpected == []
    for got, want in zip(_outputs(fresh.models["unet"], fresh.models["text_encoder"]), _outputs(handles.models["unet"], handles.models["text_encoder"])):
        assert torch.equal(got, want)


def test_an_fp16_file_loads_with_its_rounded_alpha():
    network = NetworkParams(dim=4, alpha=0.1)
    tensors = to_kohya_state_dict(_trained(network), SD1, torch.float16)
    report = load_kohya_into(sd1_attach(tiny_unet(0), tiny_text_encoder(1), network), SD1, tensors)
    assert report.loaded > 0 and report.missing == []


def test_a_file_of_another_dim_is_refused_with_its_dims():
    tensors = to_kohya_state_dict(_trained(NetworkParams(dim=8, alpha=4.0)), SD1, torch.float32)
    fresh = sd1_attach(tiny_unet(0), tiny_text_encoder(1), LORA)
    with pytest.raises(KohyaFormatError, match=r"file has dim 8 / alpha 4.*settings say dim 4 / alpha 2"):
        load_kohya_into(fresh, SD1, tensors)
    assert all(not p.any() for p in fresh.params(("unet",))[1::2])  # nothing was half-loaded


def test_a_file_of_another_alpha_is_refused():
    tensors = to_kohya_state_dict(_trained(NetworkParams(dim=4, alpha=1.0)), SD1, torch.float32)
    with pytest.raises(KohyaFormatError, match="alpha 1"):
        load_kohya_into(sd1_attach(tiny_unet(0), tiny_text_encoder(1), LORA), SD1, tensors)


def test_missing_and_unexpected_modules_are_reported():
    tensors = to_kohya_state_dict(_trained(NetworkParams(dim=4, alpha=2.0, train_text_encoder=False)), SD1,
                                  torch.float32)
    tensors["lora_unet_conv_in.lora_down.weight"] = torch.zeros(4, 4, 3, 3)
    report = load_kohya_into(sd1_attach(tiny_unet(0), tiny_text_encoder(1), LORA), SD1, tensors)
    assert report.missing and all(name.startswith("lora_te_text_model_") for name in report.missing)
    assert report.unexpected == ["lora_unet_conv_in.lora_down.weight"]


def test_describe_our_file_as_sd1_with_its_dims(tmp_path):
    tensors = to_kohya_state_dict(_trained(LOCON), SD1, torch.float16)
    save_lora_file(tmp_path / "x.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
    summary = describe_lora(*read_kohya_file(tmp_path / "x.safetensors"))
    assert summary.architecture == "sd1"
    assert (summary.dims, summary.alphas, summary.conv_dims, summary.conv_alphas) == ({4}, {2.0}, {2}, {3.0})
    assert summary.has_conv and summary.n_modules == summary.n_unet + summary.n_te
    assert summary.n_te == 12 and summary.n_unet == len(unet_targets(tiny_unet(), LOCON))
    ensure_family(summary, SD1)  # no error


def _module(name: str, rank: int, in_dim: int, out_dim: int) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_down.weight": torch.zeros(rank, in_dim),
            f"{name}.lora_up.weight": torch.zeros(out_dim, rank), f"{name}.alpha": torch.tensor(1.0)}


def test_sdxl_files_are_recognised_and_refused():
    by_prefix = _module("lora_te1_text_model_encoder_layers_0_mlp_fc1", 4, 768, 3072)
    by_prefix |= _module("lora_te2_text_model_encoder_layers_0_mlp_fc1", 4, 1280, 5120)
    by_blocks = _module("lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q", 4, 640, 640)
    by_context = _module("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 4, 2048, 640)
    for tensors in (by_prefix, by_blocks, by_context):
        summary = describe_lora(tensors, {})
        assert summary.architecture == "sdxl"
        with pytest.raises(KohyaFormatError, match="SDXL"):
            ensure_family(summary, SD1)


def test_sd2_context_width_is_recognised():
    tensors = _module("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 4, 1024, 320)
    assert describe_lora(tensors, {}).architecture == "sd2"
    assert describe_lora(_module("lora_unet_x_attn2_to_k", 4, 768, 320), {}).architecture == "sd1"
    assert describe_lora(_module("lora_unet_x_proj", 4, 32, 32), {}).architecture == "unknown"


def test_read_kohya_file_returns_the_metadata(tmp_path):
    tensors = to_kohya_state_dict(_trained(LORA), SD1, torch.float32)
    save_lora_file(tmp_path / "x.safetensors", tensors, {"ss_network_dim": "4"})
    read, metadata = read_kohya_file(tmp_path / "x.safetensors")
    assert read.keys() == tensors.keys()
    assert metadata["ss_network_dim"] == "4" and "sshs_model_hash" in metadata
