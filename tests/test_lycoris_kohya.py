"""LyCORIS networks at the Kohya seams: kohya_ss and sd-scripts configs that ask for LoHa, LoKr,
iA3 and DoRA import as those networks and export back, the LoRA file's metadata says what
kohya_ss writes, `check` refuses what cannot train, and `inspect` names the type."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import tomli_w
import torch

from core.cli.main import main
from core.config.schema import DEMO_MODEL, NetworkParams, NetworkType, SubsetParams, TrainConfig
from core.kohya.export import build_export, write_export
from core.kohya.import_config import import_kohya
from core.kohya.lora_format import to_kohya_state_dict
from core.kohya.metadata import network_args, network_module, save_lora_file
from core.models.sd1 import FAMILY as SD1
from core.training.validation import ERROR, validate
from tests.tiny_sd import sd1_attach, tiny_text_encoder, tiny_unet

DATA = Path(__file__).parent / "data" / "kohya"
SAMPLE_JSON = DATA / "kohya_ss_lora.json"


def _json(tmp_path: Path, **changes) -> Path:
    data = json.loads(SAMPLE_JSON.read_text("utf-8"))
    data.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), "utf-8")
    return path


def _toml(tmp_path: Path, **args) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps({"pretrained_model_name_or_path": "model.safetensors", "network_dim": 16,
                                   "network_alpha": 8, **args}), "utf-8")
    return path


def _unsupported(result) -> dict[str, str]:  # noqa: ANN001
    return {u.key: u.reason for u in result.unsupported}


# ---------------------------------------------------------------------------- import
def test_kohya_ss_loha_with_dora_imports_as_loha_with_dora(tmp_path):
    result = import_kohya([_json(tmp_path, LoRA_type="LyCORIS/LoHa", conv_dim=8, conv_alpha=4, dora_wd=True)])
    net = result.config.network
    assert (net.type, net.conv_dim, net.conv_alpha, net.dora_wd) == (NetworkType.LOHA, 8, 4.0, True)
    assert not {"LoRA_type", "dora_wd", "conv_dim", "conv_alpha"} & set(_unsupported(result))


def test_kohya_ss_lokr_takes_its_factor_and_decompose_both(tmp_path):
    result = import_kohya([_json(tmp_path, LoRA_type="LyCORIS/LoKr", factor=8, decompose_both=True)])
    net = result.config.network
    assert (net.type, net.lokr_factor, net.lokr_decompose_both) == (NetworkType.LOKR, 8, True)


def test_lokr_with_a_huge_dim_is_full_rank_lokr(tmp_path):
    # LyCORIS's documented way to ask for whole Kronecker factors: a dim no factor reaches
    result = import_kohya([_json(tmp_path, LoRA_type="LyCORIS/LoKr", network_dim=100000, network_alpha=1)])
    assert result.config.network.lokr_full_matrix is True
    assert "network_dim" not in _unsupported(result)
    assert any("full-rank" in w for w in result.warnings)


def test_kohya_ss_ia3_imports_as_ia3(tmp_path):
    result = import_kohya([_json(tmp_path, LoRA_type="LyCORIS/iA3")])
    assert result.config.network.type is NetworkType.IA3


def test_lycoris_options_of_a_standard_lora_are_ignored_not_applied(tmp_path):
    result = import_kohya([_json(tmp_path, LoRA_type="Standard", dora_wd=True, factor=4)])
    assert result.config.network.dora_wd is False and result.config.network.lokr_factor == -1
    ignored = {u.key: u.reason for u in result.ignored}
    assert ignored["dora_wd"] == ignored["factor"] == "only used by LyCORIS network types"


def test_an_unsupported_lycoris_algorithm_says_which_ones_are(tmp_path):
    result = import_kohya([_json(tmp_path, LoRA_type="LyCORIS/Diag-OFT")])
    assert "LoHa, LoKr and iA3" in _unsupported(result)["LoRA_type"]


@pytest.mark.parametrize(("args", "expected"), [
    (["algo=loha", "conv_dim=4", "conv_alpha=1"], {"type": NetworkType.LOHA, "conv_dim": 4}),
    (["algo=lokr", "factor=4", "full_matrix=True"], {"type": NetworkType.LOKR, "lokr_factor": 4,
                                                     "lokr_full_matrix": True}),
    (["algo=lora", "dora_wd=True"], {"type": NetworkType.LORA, "dora_wd": True}),
    (["algo=locon", "conv_dim=4", "dora_wd=True"], {"type": NetworkType.LOCON, "dora_wd": True}),
    (["algo=ia3", "preset=ia3"], {"type": NetworkType.IA3}),
])
def test_sd_scripts_lycoris_network_args_choose_the_network(tmp_path, args, expected):
    result = import_kohya([_toml(tmp_path, network_module="lycoris.kohya", network_args=args)])
    net = result.config.network
    assert {name: getattr(net, name) for name in expected} == expected
    assert not [key for key in _unsupported(result) if key.startswith(("network_module", "network_args.algo",
                                                                        "network_args.factor", "network_args.dora"))]


@pytest.mark.parametrize("network", [
    NetworkParams(type=NetworkType.LOHA, dim=8, alpha=4.0, conv_dim=4, conv_alpha=2.0, dora_wd=True),
    NetworkParams(type=NetworkType.LOKR, dim=4, alpha=1.0, conv_dim=4, lokr_factor=8, lokr_decompose_both=True),
    NetworkParams(type=NetworkType.LOKR, lokr_full_matrix=True),
    NetworkParams(type=NetworkType.IA3, dim=1, alpha=1.0),
    NetworkParams(type=NetworkType.LORA, dora_wd=True),
], ids=["LoHa+DoRA", "LoKr", "LoKr full", "IA3", "LoRA+DoRA"])
def test_export_to_sd_scripts_imports_back_to_the_same_network(tmp_path, network):
    config = TrainConfig()
    config.model.base_model = str(tmp_path / "model.safetensors")
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    config.network = network
    exported = build_export(config, tmp_path)
    assert "network_module = \"lycoris.kohya\"" in exported.config_toml
    write_export(exported, tmp_path)
    again = import_kohya([tmp_path / "config.toml"])
    assert again.unsupported == []
    assert dataclasses.asdict(again.config.network) == dataclasses.asdict(network)


# ---------------------------------------------------------------------------- metadata
def test_metadata_names_lycoris_kohya_and_its_args_as_kohya_ss_writes_them():
    config = TrainConfig()
    config.network = NetworkParams(type=NetworkType.LOKR, conv_dim=4, conv_alpha=1.0, lokr_factor=8)
    assert network_module(config) == "lycoris.kohya"
    assert network_args(config) == {"algo": "lokr", "conv_dim": "4", "conv_alpha": "1", "dora_wd": "False",
                                    "factor": "8", "full_matrix": "False", "decompose_both": "False"}
    config.network = NetworkParams(type=NetworkType.LORA, dora_wd=True)
    assert (network_module(config), network_args(config)) == ("lycoris.kohya", {"algo": "lora", "dora_wd": "True"})
    config.network = NetworkParams(type=NetworkType.LOCON, conv_dim=4)
    assert network_module(config) == "networks.lora"  # Kohya's own LoCon stays sd-scripts'
    assert network_args(config) == {"conv_dim": "4", "conv_alpha": "1"}


# ---------------------------------------------------------------------------- check
def _valid(tmp_path: Path, network: NetworkParams) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path))]
    config.network = network
    return config


@pytest.mark.parametrize(("network", "path"), [
    (NetworkParams(type=NetworkType.IA3, dora_wd=True), "network.dora_wd"),
    (NetworkParams(type=NetworkType.LOHA, dropout=0.1), "network.dropout"),
    (NetworkParams(type=NetworkType.LOKR, lokr_factor=0), "network.lokr_factor"),
])
def test_check_refuses_lycoris_settings_that_cannot_train(tmp_path, network, path):
    problems = [p for p in validate(_valid(tmp_path, network)) if p.severity == ERROR]
    assert [p.path for p in problems] == [path]
    assert "network" in path and problems[0].message


@pytest.mark.parametrize("kind", [NetworkType.LOHA, NetworkType.LOKR, NetworkType.IA3])
def test_check_accepts_each_lycoris_type(tmp_path, kind):
    assert [p for p in validate(_valid(tmp_path, NetworkParams(type=kind))) if p.severity == ERROR] == []


def test_cli_check_prints_the_lycoris_problem(tmp_path, capsys):
    preset = tmp_path / "p.toml"
    preset.write_text(f'schema_version = {_schema_version()}\n[model]\nbase_model = "{DEMO_MODEL}"\n'
                      f'[network]\ntype = "IA3"\ndora_wd = true\n[dataset]\n[[dataset.subsets]]\n'
                      f'image_dir = "{tmp_path.as_posix()}"\n', "utf-8")
    assert main(["check", str(preset)]) != 0
    assert "network.dora_wd" in capsys.readouterr().out


def _schema_version() -> int:
    from core.config.presets import SCHEMA_VERSION

    return SCHEMA_VERSION


# ---------------------------------------------------------------------------- inspect
def test_inspect_names_the_lycoris_type_and_its_full_rank_modules(tmp_path, capsys):
    network = NetworkParams(type=NetworkType.LOKR, dim=4, alpha=2.0, lokr_full_matrix=True, dora_wd=True)
    handles = sd1_attach(tiny_unet(0), tiny_text_encoder(1), network)
    save_lora_file(tmp_path / "lokr.safetensors", to_kohya_state_dict(handles, SD1, torch.float16), {})
    assert main(["inspect", str(tmp_path / "lokr.safetensors")]) == 0
    out = capsys.readouterr().out
    modules = sum(len(t) for t in handles.targets.values())
    assert f"LoKr + DoRA: {modules} modules" in out
    assert f"full rank         {modules} LoKr modules" in out and "fp16" in out
