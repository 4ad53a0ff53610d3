"""Per-block learning-rate weights and ranks (down/mid/up_lr_weight, block_dims & co) as
sd-scripts' networks/lora.py counts U-Net blocks, for SD 1.x and SDXL."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

from core.config.schema import NetworkParams, NetworkType, OptimizerParams, OptimizerType, TrainConfig
from core.kohya.lora_format import describe_lora, load_kohya_into, to_kohya_state_dict
from core.models.blocks import (SD1_BLOCKS, SDXL_BLOCKS, BlockSettingError, block_lr_weights, block_problems,
                                lr_weight_values)
from core.models.lora import unet_targets
from core.models.sd1 import FAMILY as SD1
from core.models.sdxl import FAMILY as SDXL
from core.training.optim import OptimizerSetupError, build_optimizer
from core.training.setup import Network, param_groups
from tests.sdxl_checkpoint import full_size_sdxl_on_meta
from tests.tiny_sd import sd1_attach, sd15_unet_on_meta, tiny_text_encoder, tiny_unet

LOCON = dict(type=NetworkType.LOCON, conv_dim=4, conv_alpha=1.0)


def _sd1_expected(path: str) -> int:
    # Written from the block layout, not from the code under test: levels of 3 slots, the
    # down/upsampler in slot 2; down blocks from 1, the mid block 12, up blocks from 13.
    if path.startswith("mid_block."):
        return 12
    side, level, kind, slot = re.match(r"(down|up)_blocks\.(\d)\.(\w+)\.(\d)", path).groups()
    inside = 3 * int(level) + (2 if kind.endswith("samplers") else int(slot))
    return 1 + inside if side == "down" else 13 + inside


def test_every_sd15_module_has_sd_scripts_block_index():
    unet = sd15_unet_on_meta()
    targets = unet_targets(unet, NetworkParams(dim=4, **LOCON))
    got = {path: SD1.unet_blocks.index(SD1.kohya_name("unet", path)) for path in targets}
    assert got == {path: _sd1_expected(path) for path in targets}
    assert set(got.values()) == set(range(1, 25))  # block 0 holds nothing
    assert got["down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"] == 2
    assert got["down_blocks.2.downsamplers.0.conv"] == 9
    assert got["up_blocks.3.attentions.2.proj_out"] == 24


def _sdxl_expected(path: str) -> int:
    # input_blocks.N is block 1 + N, middle_block.N 10 + N, output_blocks.N 13 + N; the
    # diffusers levels hold 2 resnets/attentions and a sampler (3 slots), input_blocks.0 is conv_in.
    if path.startswith("mid_block."):
        return 10 + (1 if ".attentions." in path else 2 * int(path.split(".")[2]))
    side, level, kind, slot = re.match(r"(down|up)_blocks\.(\d)\.(\w+)\.(\d)", path).groups()
    if side == "down":
        return 1 + (3 * (int(level) + 1) if kind == "downsamplers" else 1 + 3 * int(level) + int(slot))
    return 13 + 3 * int(level) + (2 if kind == "upsamplers" else int(slot))


def test_every_sdxl_module_has_sd_scripts_block_index():
    unet = full_size_sdxl_on_meta()["unet"]
    targets = unet_targets(unet, NetworkParams(dim=4, **LOCON))
    got = {path: SDXL.unet_blocks.index(SDXL.kohya_name("unet", path)) for path in targets}
    assert got == {path: _sdxl_expected(path) for path in targets}
    assert set(got.values()) <= set(range(1, 22))  # 0 (embeddings) and 22 (out) get no LoRA
    assert got["mid_block.attentions.0.transformer_blocks.3.attn2.to_k"] == 11
    assert SDXL.unet_blocks.total == 23 and SD1.unet_blocks.total == 25


@pytest.mark.parametrize(("preset", "expected"), [
    ("sine", [math.sin(math.pi / 2 * i / 11) for i in range(12)]),
    ("cosine", [math.sin(math.pi / 2 * i / 11) for i in reversed(range(12))]),
    ("linear", [i / 11 for i in range(12)]),
    ("reverse_linear", [i / 11 for i in reversed(range(12))]),
    ("zeros", [0.0] * 12),
    ("zeros+0.25", [0.25] * 12),
])
def test_lr_weight_presets_as_sd_scripts(preset, expected):
    assert lr_weight_values(preset, "down_lr_weight", SD1_BLOCKS) == pytest.approx(expected)


def test_sdxl_presets_have_nine_values_and_a_short_list_is_filled_with_one():
    assert len(lr_weight_values("linear", "up_lr_weight", SDXL_BLOCKS)) == 9
    assert lr_weight_values("0.5,,2", "down_lr_weight", SD1_BLOCKS) == [0.5, 0.0, 2.0] + [1.0] * 9


def test_too_many_weights_name_the_field_and_count():
    with pytest.raises(BlockSettingError, match=r"network.up_lr_weight: 10 values given.* has 9"):
        lr_weight_values(",".join(["1"] * 10), "up_lr_weight", SDXL_BLOCKS)
    with pytest.raises(BlockSettingError, match="down_lr_weight.*cosine, sine"):
        lr_weight_values("triangle", "down_lr_weight", SD1_BLOCKS)


def test_block_dims_need_one_value_per_block():
    problems = block_problems(NetworkParams(block_dims=",".join(["4"] * 25)), SDXL_BLOCKS)
    assert [(p.field, "exactly 23" in p.problem) for p in problems] == [("block_dims", True)]
    assert block_problems(NetworkParams(block_dims=",".join(["4"] * 25)), SD1_BLOCKS) == []


def test_threshold_zeroes_low_weights_and_sdxl_ends_keep_weight_one():
    net = NetworkParams(down_lr_weight="0.1,0.5", mid_lr_weight="0.2,1,1", block_lr_zero_threshold=0.2)
    weights = block_lr_weights(net, SDXL_BLOCKS)
    assert len(weights) == 23
    assert weights[:4] == [1.0, 0.0, 0.5, 1.0]  # embeddings, then input blocks 0, 1, 2
    assert weights[10:13] == [0.0, 1.0, 1.0]
    assert weights[-1] == 1.0


def _tiny(network: NetworkParams):
    return sd1_attach(tiny_unet(), tiny_text_encoder(), network)


# The tiny U-Net's LoRA modules lie in blocks 1, 4, 7 (down), 12 (mid), 16, 17, 19, 20, 22, 23 (up).

def test_zero_weight_blocks_get_no_lora_module_and_are_absent_from_the_file():
    up = ",".join(["1"] * 10 + ["0", "1"])  # the 11th up weight is block 23
    handles = _tiny(NetworkParams(dim=4, down_lr_weight="1,1,1,1,0", up_lr_weight=up))
    blocks = {SD1.unet_blocks.index(SD1.kohya_name("unet", p)) for p in handles.targets["unet"]}
    assert blocks == {1, 7, 12, 16, 17, 19, 20, 22}
    state = to_kohya_state_dict(handles, SD1, torch.float32)
    assert not any(k.startswith("lora_unet_down_blocks_1_") for k in state)  # block 4
    assert not any(k.startswith("lora_unet_up_blocks_3_attentions_1_") for k in state)  # block 23
    assert any(k.startswith("lora_unet_up_blocks_3_attentions_0_") for k in state)


def test_weights_at_or_below_the_threshold_drop_their_blocks():
    handles = _tiny(NetworkParams(dim=4, down_lr_weight="1,0.1,1,1,0.3", block_lr_zero_threshold=0.3))
    blocks = {SD1.unet_blocks.index(SD1.kohya_name("unet", p)) for p in handles.targets["unet"]}
    assert 1 not in blocks and 4 not in blocks and 7 in blocks


def test_block_dims_give_each_block_its_rank_in_the_file_and_the_file_loads_back():
    dims = [0] + [2] * 11 + [6] + [8] * 12
    alphas = [1.0] * 12 + [3.0] + [4.0] * 12
    net = NetworkParams(dim=4, alpha=1.0, block_dims=",".join(map(str, dims)), block_alphas=",".join(map(str, alphas)))
    handles = _tiny(net)
    state = to_kohya_state_dict(handles, SD1, torch.float32)
    assert state["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 2
    assert state["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"].shape[0] == 6
    assert float(state["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 3.0
    assert state["lora_unet_up_blocks_1_attentions_0_proj_out.lora_up.weight"].shape[1] == 8
    assert state["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"].shape[0] == 4
    assert describe_lora(state, {}).dims == {2, 4, 6, 8}
    report = load_kohya_into(_tiny(net), SD1, state)
    assert report is not None


def test_block_dims_zero_drops_the_block():
    dims = [4] * 25
    dims[12] = 0
    handles = _tiny(NetworkParams(dim=4, block_dims=",".join(map(str, dims))))
    assert not any(p.startswith("mid_block.") for p in handles.targets["unet"])


def test_conv_block_dims_rank_the_3x3_convolutions_of_locon():
    conv = [3] * 25
    handles = _tiny(NetworkParams(dim=4, **LOCON, block_dims=",".join(["4"] * 25),
                                  conv_block_dims=",".join(map(str, conv))))
    targets = handles.targets["unet"]
    assert targets["down_blocks.0.resnets.0.conv1"] == (3, 1.0)
    assert targets["down_blocks.0.resnets.0.time_emb_proj"] == (4, 1.0)


def _trainable(models) -> int:
    return sum(p.numel() for model in models for p in model.parameters() if p.requires_grad)


SD1_BLOCK_NETWORKS = [
    NetworkParams(dim=4, block_dims=",".join(["0"] + ["2"] * 11 + ["6"] + ["8"] * 12)),
    NetworkParams(dim=8, down_lr_weight="1,1,1,0,0,0,1,1,1,1,1,1", mid_lr_weight="0"),
    NetworkParams(dim=4, **LOCON, block_dims=",".join(["4"] * 12 + ["0"] + ["16"] * 12),
                  conv_block_dims=",".join(["2"] * 13 + ["6"] * 12), up_lr_weight="zeros"),
]


@pytest.mark.parametrize("net", SD1_BLOCK_NETWORKS, ids=["dims", "zero-weights", "locon"])
def test_the_lora_size_counts_each_sd15_blocks_own_rank_as_attach_lora_makes_them(net):
    from tests.tiny_sd import sd15_text_encoder_on_meta

    handles = sd1_attach(sd15_unet_on_meta(), sd15_text_encoder_on_meta(), net)
    made = _trainable(handles.models.values())
    assert SD1.lora_weights(net) == made
    assert made != SD1.lora_weights(replace(net, block_dims="", down_lr_weight="", mid_lr_weight="",
                                            up_lr_weight=""))


@pytest.mark.parametrize("switches", [dict(train_text_encoder=False), dict(train_unet=False),
                                      dict(train_text_encoder=False, block_dims=",".join(["2"] * 25))])
def test_the_sd15_lora_size_counts_only_what_trains(switches):
    from tests.tiny_sd import sd15_text_encoder_on_meta

    net = NetworkParams(dim=4, **LOCON, **switches)
    handles = sd1_attach(sd15_unet_on_meta(), sd15_text_encoder_on_meta(), net)
    assert SD1.lora_weights(net) == _trainable(handles.models.values())


def test_the_lora_size_counts_each_sdxl_blocks_own_rank():
    from core.models.lora import per_block_targets

    full = full_size_sdxl_on_meta()
    net = NetworkParams(dim=4, **LOCON, train_text_encoder=False, mid_lr_weight="1,0,1",
                        block_dims=",".join(["4"] * 5 + ["12"] * 9 + ["2"] * 9),
                        conv_block_dims=",".join(["1"] * 12 + ["5"] * 11))
    unet = full["unet"]
    made = 0
    for path, (rank, _alpha) in per_block_targets(unet, unet_targets(unet, net), SDXL, net).items():
        layer = unet.get_submodule(path)
        if isinstance(layer, torch.nn.Linear):
            made += rank * (layer.in_features + layer.out_features)
        else:
            made += rank * (layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + layer.out_channels)
    assert SDXL.lora_weights(net) == made


def _network(net: NetworkParams) -> Network:
    handles = _tiny(net)
    return Network(family=SD1, components=None, handles=handles, trained={})


def _config(net: NetworkParams, opt: OptimizerParams) -> TrainConfig:
    config = TrainConfig()
    config.network, config.optimizer = net, opt
    return config


def test_block_lr_weights_make_one_optimizer_group_per_block_with_the_weighted_lr():
    net = NetworkParams(dim=4, train_text_encoder=False, down_lr_weight="0,0.5,1,1,0.25", mid_lr_weight="2")
    config = _config(net, OptimizerParams(type=OptimizerType.ADAMW, learning_rate=1e-3, unet_lr=1e-2))
    groups = {g.name: g for g in param_groups(config, _network(net))}
    assert set(groups) == {f"unet_block{i}" for i in (1, 4, 7, 12, 16, 17, 19, 20, 22, 23)}
    assert groups["unet_block1"].lr == pytest.approx(0.5e-2)
    assert groups["unet_block4"].lr == pytest.approx(0.25e-2)
    assert groups["unet_block7"].lr == pytest.approx(1e-2)  # not given: filled with 1
    assert groups["unet_block12"].lr == pytest.approx(2e-2)
    assert groups["unet_block16"].lr == pytest.approx(1e-2)  # up weights not given: 1
    assert len(groups["unet_block1"].params) == 2 * 12  # one transformer: 12 modules, a down and an up each
    assert sum(len(g.params) for g in groups.values()) == 2 * 12 * 10
    optimizer = build_optimizer(list(groups.values()), config.optimizer)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["unet_block12"] == pytest.approx(2e-2)


def test_prodigy_accepts_block_weighted_groups_but_not_different_base_rates():
    net = NetworkParams(dim=4, down_lr_weight="1,0.5")
    config = _config(net, OptimizerParams(type=OptimizerType.PRODIGY, learning_rate=1.0))
    pytest.importorskip("prodigyopt")
    optimizer = build_optimizer(param_groups(config, _network(net)), config.optimizer)
    assert {g["lr"] for g in optimizer.param_groups} == {1.0, 0.5}
    config.optimizer = replace(config.optimizer, text_encoder_lr=0.5)
    with pytest.raises(OptimizerSetupError):
        build_optimizer(param_groups(config, _network(net)), config.optimizer)


def test_conv_block_dims_alone_change_nothing_as_in_sd_scripts():
    handles = _tiny(NetworkParams(dim=4, **LOCON, conv_block_dims=",".join(["3"] * 25)))
    assert handles.targets["unet"]["down_blocks.0.resnets.0.conv1"] == (4, 1.0)


# ---------------------------------------------------------------- Kohya import and export

BLOCK_DIMS = ",".join(["4"] * 12 + ["8"] + ["2"] * 12)
SD_SCRIPTS_TOML = f'''
pretrained_model_name_or_path = "model.safetensors"
network_module = "networks.lora"
network_dim = 4
network_args = ["conv_dim=4", "conv_alpha=1", "rank_dropout=0.1", "module_dropout=0.05",
                "down_lr_weight=1,1,1,0.5,0.5,0.5,0,0,0,1,1,1", "mid_lr_weight=0", "up_lr_weight=sine+0.25",
                "block_lr_zero_threshold=0.1", "block_dims={BLOCK_DIMS}", "block_alphas={BLOCK_DIMS}",
                "conv_block_dims={BLOCK_DIMS}", "conv_block_alphas={BLOCK_DIMS}"]
noise_offset = 0.05
noise_offset_random_strength = true
'''


def _imported(tmp_path, text: str, name: str = "config.toml"):
    from core.kohya.import_config import import_kohya

    path = tmp_path / name
    path.write_text(text, "utf-8")
    return import_kohya([path])


def _assert_all_block_options(net: NetworkParams) -> None:
    assert net.type is NetworkType.LOCON
    assert (net.rank_dropout, net.module_dropout, net.block_lr_zero_threshold) == (0.1, 0.05, 0.1)
    assert net.down_lr_weight == "1,1,1,0.5,0.5,0.5,0,0,0,1,1,1"
    assert net.mid_lr_weight == "0" and net.up_lr_weight == "sine+0.25"
    assert net.block_dims == net.block_alphas == net.conv_block_dims == net.conv_block_alphas == BLOCK_DIMS


def test_sd_scripts_network_args_map_to_the_fields(tmp_path):
    result = _imported(tmp_path, SD_SCRIPTS_TOML)
    assert result.unsupported == []
    _assert_all_block_options(result.config.network)
    assert result.config.training.noise_offset_random_strength is True
    mapped = {m.key: m.field for m in result.mapped}
    assert mapped["network_args.down_lr_weight"] == "network.down_lr_weight"
    assert mapped["noise_offset_random_strength"] == "training.noise_offset_random_strength"
    assert [p for p in block_problems(result.config.network, SD1_BLOCKS)] == []


def test_kohya_ss_json_keys_map_to_the_fields(tmp_path):
    import json

    from tests.test_kohya_import import SAMPLE_JSON

    data = json.loads(SAMPLE_JSON.read_text("utf-8"))
    data.update(LoRA_type="Kohya LoCon", conv_dim=4, conv_alpha=1, rank_dropout=0.1, module_dropout=0.05,
                down_lr_weight="1,1,1,0.5,0.5,0.5,0,0,0,1,1,1", mid_lr_weight="0", up_lr_weight="sine+0.25",
                block_lr_zero_threshold="0.1", block_dims=BLOCK_DIMS, block_alphas=BLOCK_DIMS,
                conv_block_dims=BLOCK_DIMS, conv_block_alphas=BLOCK_DIMS, noise_offset_random_strength=True)
    result = _imported(tmp_path, json.dumps(data), "config.json")
    assert result.unsupported == []
    _assert_all_block_options(result.config.network)
    assert result.config.training.noise_offset_random_strength is True


def test_lora_easy_network_args_table_maps_to_the_fields(tmp_path):
    text = f'''
[general_args.args]
pretrained_model_name_or_path = "/models/model.safetensors"

[network_args.args]
network_dim = 4

[network_args.args.network_args]
conv_dim = 4
conv_alpha = 1
rank_dropout = 0.1
module_dropout = 0.05
down_lr_weight = "1,1,1,0.5,0.5,0.5,0,0,0,1,1,1"
mid_lr_weight = "0"
up_lr_weight = "sine+0.25"
block_lr_zero_threshold = 0.1
block_dims = "{BLOCK_DIMS}"
block_alphas = "{BLOCK_DIMS}"
conv_block_dims = "{BLOCK_DIMS}"
conv_block_alphas = "{BLOCK_DIMS}"
'''
    result = _imported(tmp_path, text)
    assert [u.key for u in result.unsupported] == []
    _assert_all_block_options(result.config.network)


def test_block_options_on_a_lycoris_network_are_reported_not_supported(tmp_path):
    text = ('pretrained_model_name_or_path = "model.safetensors"\nnetwork_module = "lycoris.kohya"\n'
            'network_args = ["algo=loha", "rank_dropout=0.1", "down_lr_weight=sine"]\n')
    result = _imported(tmp_path, text)
    reasons = {u.key: u.reason for u in result.unsupported}
    assert "LoRA and LoCon only" in reasons["network_args.rank_dropout"]
    assert "network_args.down_lr_weight" in reasons
    assert result.config.network.rank_dropout == 0.0


def test_export_writes_them_as_sd_scripts_network_args_and_they_import_back(tmp_path):
    from core.kohya.export import build_export
    from core.kohya.metadata import network_args
    from tests.test_kohya_export import _flat

    config = _imported(tmp_path, SD_SCRIPTS_TOML).config
    exported = build_export(config, tmp_path)
    args = _flat(exported.config_toml)
    assert "rank_dropout=0.1" in args["network_args"]
    assert "down_lr_weight=1,1,1,0.5,0.5,0.5,0,0,0,1,1,1" in args["network_args"]
    assert "rank_dropout" not in args and "block_dims" not in args  # not sd-scripts arguments
    assert args["noise_offset_random_strength"] is True
    assert network_args(config)["up_lr_weight"] == "sine+0.25"  # ss_network_args, as sd-scripts stores it
    (tmp_path / "exported").mkdir()
    again = _imported(tmp_path / "exported", exported.config_toml)
    assert again.config.network == config.network
    assert again.config.training.noise_offset_random_strength is True


def test_validation_names_the_field_and_count_for_the_models_family():
    from core.training.validation import validate

    config = TrainConfig()
    config.model.family = "sdxl"
    config.network = NetworkParams(down_lr_weight=",".join(["1"] * 12), block_dims=",".join(["4"] * 25))
    messages = {p.path: p.message for p in validate(config, check_paths=False)}
    assert "12 values given, this model's U-Net has 9" in messages["network.down_lr_weight"]
    assert "needs exactly 23" in messages["network.block_dims"]


def test_a_file_with_per_block_ranks_is_inspected_with_every_rank_and_its_network_args(tmp_path):
    import json

    from core.kohya.lora_info import format_inspection, inspect_lora
    from core.kohya.metadata import network_args, save_lora_file

    net = NetworkParams(dim=4, alpha=1.0, block_dims=",".join(["2"] * 12 + ["6"] + ["8"] * 12), mid_lr_weight="0.5")
    state = to_kohya_state_dict(_tiny(net), SD1, torch.float32)
    config = TrainConfig()
    config.network = net
    path = tmp_path / "blocks.safetensors"
    save_lora_file(path, state, {"ss_network_args": json.dumps(network_args(config))})
    info = inspect_lora(path)
    assert info["dim"] == [2, 4, 6, 8]  # U-Net blocks 2, 6, 8; the text encoder 4
    text = format_inspection(info)
    assert "dim / alpha       2, 4, 6, 8" in text
    assert "block_dims" in text and "mid_lr_weight" in text


def test_check_reports_a_block_setting_that_does_not_fit(capsys):
    from core.cli.main import main

    code = main(["check", "demo", "--no-paths", "--set", "network.down_lr_weight=" + ",".join(["1"] * 13)])
    out = capsys.readouterr().out
    assert code != 0
    assert "network.down_lr_weight: 13 values given, this model's U-Net has 12" in out


def test_a_run_with_block_weights_dims_and_dropouts_trains_and_saves_per_block_ranks(tmp_path):
    import json
    from pathlib import Path

    from safetensors import safe_open

    from tests.engine_fixtures import tiny_config
    from tests.test_option_effects import _run

    config = tiny_config(tmp_path, steps=2)
    config.network = replace(config.network, dim=4, rank_dropout=0.2, module_dropout=0.1,
                             down_lr_weight="1,0.5,1,1,0", block_dims=",".join(["4"] * 12 + ["2"] + ["4"] * 12))
    config.training.noise_offset, config.training.noise_offset_random_strength = 0.05, True
    result, steps, _ = _run(config)
    assert len(steps) == 2 and all(math.isfinite(s.loss) for s in steps)
    assert steps[0].lr["unet_block1"] == pytest.approx(0.5 * steps[0].lr["unet_block7"])
    assert "unet_block4" not in steps[0].lr
    with safe_open(result.lora_path, "pt") as lora:
        keys = list(lora.keys())
        meta = lora.metadata()
        assert lora.get_tensor("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight").shape[0] == 2
    assert not any(k.startswith("lora_unet_down_blocks_1_") for k in keys)  # block 4: weight 0
    assert json.loads(meta["ss_network_args"])["rank_dropout"] == "0.2"
    assert meta["ss_noise_offset_random_strength"] == "True"
    assert Path(result.run_dir).is_dir()
