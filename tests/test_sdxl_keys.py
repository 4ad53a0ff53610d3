"""SDXL LoRA names on the full-size model, built on the meta device from resources/sdxl: the
complete Kohya key set sd-scripts writes (original SAI/LDM U-Net names, lora_te1_/lora_te2_),
the diffusers->original name mapping checked against diffusers' own single-file converter,
the LoRA size the disk check uses, and the file's metadata."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from core.config.schema import NetworkParams, NetworkType, TrainConfig
from core.models.sdxl import FAMILY
from core.models.sdxl_names import UnknownModulePath, sai_unet_path


@pytest.fixture(scope="module")
def full() -> dict[str, torch.nn.Module]:
    from tests.sdxl_checkpoint import full_size_sdxl_on_meta

    return full_size_sdxl_on_meta()


def _names(full: dict[str, torch.nn.Module], network: NetworkParams) -> dict[str, list[str]]:
    return {component: [FAMILY.kohya_name(component, path) for path in FAMILY.lora_targets(component, model, network)]
            for component, model in full.items()}


def _weights(full: dict[str, torch.nn.Module], network: NetworkParams) -> int:
    """LoRA weights counted from the modules themselves: down (rank x in x kernel) + up (out x rank)."""
    total = 0
    for component, model in full.items():
        for path, (rank, _) in FAMILY.lora_targets(component, model, network).items():
            layer = model.get_submodule(path)
            if isinstance(layer, torch.nn.Conv2d):
                total += rank * (layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels)
            else:
                total += rank * (layer.in_features + layer.out_features)
    return total


def test_the_full_sdxl_has_sd_scripts_lora_key_set(full) -> None:  # noqa: ANN001
    names = _names(full, NetworkParams())
    # sd-scripts: "create LoRA for U-Net: 722 modules", Text Encoder 1: 72, Text Encoder 2: 192
    assert [len(names[c]) for c in ("unet", "text_encoder", "text_encoder_2")] == [722, 72, 192]
    every = [n for group in names.values() for n in group]
    assert len(set(every)) == len(every) == 986
    for expected in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                     "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k",
                     "lora_unet_middle_block_1_transformer_blocks_3_ff_net_0_proj",
                     "lora_unet_middle_block_1_proj_out",
                     "lora_unet_output_blocks_2_1_proj_in",
                     "lora_unet_output_blocks_5_1_transformer_blocks_1_attn1_to_out_0",
                     "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2",
                     "lora_te1_text_model_encoder_layers_11_self_attn_out_proj",
                     "lora_te2_text_model_encoder_layers_31_mlp_fc2",
                     "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"):
        assert expected in every, expected
    # the first level (input_blocks 1-3, output_blocks 6-8) has no attention in SDXL
    assert not [n for n in names["unet"] if n.startswith(("lora_unet_input_blocks_1_", "lora_unet_output_blocks_8_"))]
    assert not [n for n in every if "down_blocks" in n or "up_blocks" in n or "mid_block_" in n]


def test_locon_adds_the_resnet_and_resampling_convolutions_under_their_original_names(full) -> None:  # noqa: ANN001
    network = NetworkParams(type=NetworkType.LOCON, conv_dim=4)
    unet = _names(full, network)["unet"]
    assert len(unet) == len(set(unet)) == 788
    for expected in ("lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_1_0_emb_layers_1",
                     "lora_unet_input_blocks_1_0_out_layers_3", "lora_unet_input_blocks_4_0_skip_connection",
                     "lora_unet_input_blocks_3_0_op", "lora_unet_input_blocks_6_0_op",
                     "lora_unet_middle_block_2_out_layers_3", "lora_unet_output_blocks_2_2_conv",
                     "lora_unet_output_blocks_5_2_conv", "lora_unet_output_blocks_8_0_skip_connection"):
        assert expected in unet, expected


def test_original_names_are_the_ones_diffusers_single_file_converter_reads(full) -> None:  # noqa: ANN001
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = full["unet"]
    state = unet.state_dict()
    original = {"model.diffusion_model." + sai_unet_path(key): value for key, value in state.items()}
    assert len(original) == len(state)
    converted = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert set(converted) == set(state)
    assert all(converted[key] is value for key, value in state.items())  # each tensor back at its own key
    with pytest.raises(UnknownModulePath):
        sai_unet_path("down_blocks.0.norms.0")


def test_the_lora_size_is_counted_without_loading(full) -> None:  # noqa: ANN001
    for network in (NetworkParams(dim=8, train_text_encoder=False), NetworkParams(dim=16, train_text_encoder=True),
                    NetworkParams(dim=8, type=NetworkType.LOCON, conv_dim=4, train_text_encoder=False)):
        counted = {c: m for c, m in full.items() if c == "unet" or network.train_text_encoder}
        assert FAMILY.lora_weights(network) == _weights(counted, network), network


def test_lora_metadata_names_sdxl_base() -> None:
    assert FAMILY.lora_metadata(TrainConfig()) == {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False",
                                                    "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}
