"""Exporting a configuration as sd-scripts' config TOML and dataset config TOML."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from core.cli.main import main
from core.config.schema import GROUPS, Duration, NetworkType, OptimizerType, SubsetParams, TrainConfig
from core.kohya.export import build_export, export_kohya
from core.kohya.import_config import import_kohya
from core.kohya.import_dataset import DATASET_KEYS, SUBSET_KEYS
from core.kohya.import_keys import LORA_NETWORK_OPTIONS, parse_arg, split_args
from core.config.params import PathKind, coerce_value, param_specs
from core.config.presets import load_preset
from core.config.prompts import parse_prompts
from core.system.resources import resource_path

DATA = Path(__file__).parent / "data" / "kohya"
SAMPLE_JSON = DATA / "kohya_ss_lora.json"


def _flat(text: str) -> dict[str, Any]:
    """A config TOML read as sd-scripts reads it: sections flattened into argument names."""
    flat: dict[str, Any] = {}
    for name, value in tomllib.loads(text).items():
        flat.update(value if isinstance(value, dict) else {name: value})
    return flat


def _norm(value: Any) -> Any:
    """Compare as numbers where both sides are numbers, resolutions as (w, h)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.replace(",", "").isdigit():
        sizes = [int(v) for v in value.split(",")]
        return tuple(sizes * 2 if len(sizes) == 1 else sizes)
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


class _Exported:
    """Where each kohya_ss key's value is found in the exported files."""

    def __init__(self, config_toml: str, dataset_toml: str, prompts: str) -> None:
        self.args = _flat(config_toml)
        doc = tomllib.loads(dataset_toml)
        self.general = doc.get("general", {})
        self.dataset = doc["datasets"][0]
        self.prompts = prompts
        self.optimizer_args = dict(parse_arg(a) for a in self.args.get("optimizer_args", []))
        self.network_args = dict(parse_arg(a) for a in self.args.get("network_args", []))

    def subset(self, index: int, name: str) -> Any:
        return self.dataset["subsets"][index].get(name, self.general.get(name))

    def value(self, key: str, field: str) -> Any:
        a = self.args
        if key.startswith("optimizer_args."):
            return self.optimizer_args[key.split(".", 1)[1]]
        if key in LORA_NETWORK_OPTIONS:  # networks.lora's own options travel in network_args
            return self.network_args[key]
        if field.startswith("dataset.subsets["):  # one subset per field listed: all must agree
            values = {json.dumps(self.subset(int(f.split("[")[1].split("]")[0]), f.rsplit(".", 1)[1]
                                             if key not in ("train_data_dir", "reg_data_dir") else "image_dir"))
                      for f in field.split(", ")}
            assert len(values) == 1, (key, values)
            return json.loads(values.pop())
        special = {
            "optimizer": lambda: a["optimizer_type"],
            "max_resolution": lambda: self.dataset["resolution"],
            "train_batch_size": lambda: self.dataset["batch_size"],
            "lr_warmup": lambda: a["lr_warmup_steps"] * 100,  # a percent in kohya_ss, a fraction here
            "LoRA_type": lambda: {("networks.lora", False): "Standard", ("networks.lora", True): "Kohya LoCon"}[
                (a["network_module"], "conv_dim" in self.network_args)],
            "xformers": lambda: "xformers" if a.get("sdpa") else "none",
            "logging_dir": lambda: "logging_dir" in a,
            "sample_prompts": lambda: parse_prompts(self.prompts, TrainConfig().sampling),
        }
        if key in special:
            return special[key]()
        if key in self.dataset:
            return self.dataset[key]
        # sd-scripts reads these absent keys as off (0 would divide by zero there)
        return a[key] if key in a or key not in ("save_every_n_steps", "sample_every_n_steps", "adaptive_noise_scale",
                                                 "ip_noise_gamma") else 0


def _expected(key: str, value: Any) -> Any:
    if key == "logging_dir":
        return bool(value)
    if key == "max_token_length":
        return int(value)  # "75" as text in kohya_ss, not a resolution
    if key == "sample_prompts":
        return parse_prompts(value, TrainConfig().sampling)
    if key == "max_data_loader_n_workers":  # a count kohya_ss writes as text, not a resolution
        return int(value)
    return value


def test_every_mapped_kohya_ss_value_survives_import_and_export(tmp_path):
    result = import_kohya([SAMPLE_JSON])
    exported = build_export(result.config, tmp_path)
    found = _Exported(exported.config_toml, exported.dataset_toml, exported.prompts)
    original = json.loads(SAMPLE_JSON.read_text("utf-8"))
    original_args = dict(parse_arg(a) for a in split_args(original["optimizer_args"]))
    assert len(result.mapped) == 69  # masked_loss and rank_dropout are mapped now
    for key, field, _ in result.mapped:
        raw = original_args[key.split(".", 1)[1]] if key.startswith("optimizer_args.") else original[key]
        assert _norm(found.value(key, field)) == _norm(_expected(key, raw)), key


def test_the_chosen_length_only_and_the_warmup_as_a_fraction():
    config = TrainConfig()
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 5
    config.schedule.warmup_ratio = 0.25
    args = _flat(export_kohya(config)[0])
    assert args["max_train_epochs"] == 5 and "max_train_steps" not in args
    assert args["lr_warmup_steps"] == 0.25
    config.training.duration, config.schedule.warmup_ratio, config.schedule.warmup_steps = Duration.STEPS, 0, 40
    args = _flat(export_kohya(config)[0])
    assert args["max_train_steps"] == 1600 and "max_train_epochs" not in args
    assert args["lr_warmup_steps"] == 40


def test_locon_unet_only_and_unset_rates():
    config = TrainConfig()
    config.network = dataclasses.replace(config.network, type=NetworkType.LOCON, conv_dim=4, conv_alpha=2.0,
                                         train_text_encoder=False)
    args = _flat(export_kohya(config)[0])
    assert args["network_module"] == "networks.lora"
    assert args["network_args"] == ["conv_dim=4", "conv_alpha=2"]
    assert args["network_train_unet_only"] is True and "network_train_text_encoder_only" not in args
    assert "unet_lr" not in args and "text_encoder_lr" not in args and "min_snr_gamma" not in args


def test_optimizer_args_are_what_lora_kiln_trains_with():
    config = TrainConfig()
    config.optimizer = dataclasses.replace(config.optimizer, type=OptimizerType.PRODIGY, d_coef=2.0, weight_decay=0.0,
                                           extra_args={"slice_p": 11})
    args = dict(parse_arg(a) for a in _flat(export_kohya(config)[0])["optimizer_args"])
    assert args["d_coef"] == 2.0 and args["decouple"] is True and args["slice_p"] == 11
    assert args["betas"] == (0.9, 0.999) and "growth_rate" not in args  # inf: Prodigy's own default


def test_kohya_layout_folders_expand_into_subsets(tmp_path):
    for folder in ("10_kiln vase", "5_kiln bowl", "notes"):
        (tmp_path / "img" / folder).mkdir(parents=True)
    (tmp_path / "reg" / "1_pottery").mkdir(parents=True)
    config = TrainConfig()
    config.dataset.subsets = [
        SubsetParams(image_dir=str(tmp_path / "img"), kohya_layout=True, keep_tokens=1, shuffle_caption=True),
        SubsetParams(image_dir=str(tmp_path / "reg"), kohya_layout=True, is_reg=True),
        SubsetParams(image_dir=str(tmp_path / "missing"), kohya_layout=True)]
    exported = build_export(config, tmp_path)
    subsets = tomllib.loads(exported.dataset_toml)["datasets"][0]["subsets"]
    assert [(s["image_dir"], s["num_repeats"], s.get("class_tokens"), s.get("is_reg", False)) for s in subsets] == [
        (str(tmp_path / "img" / "10_kiln vase"), 10, "kiln vase", False),
        (str(tmp_path / "img" / "5_kiln bowl"), 5, "kiln bowl", False),
        (str(tmp_path / "reg" / "1_pottery"), 1, "pottery", True),
        (str(tmp_path / "missing"), 1, None, False)]
    assert subsets[0]["keep_tokens"] == 1 and subsets[2]["keep_tokens"] == 0
    assert any("missing" in n and "cannot be listed" in n for n in exported.notes)
    assert any("'notes'" in n for n in exported.notes)  # a folder without N_ is skipped, as in sd-scripts
    assert "# note: dataset.subsets[2].image_dir" in exported.config_toml


def test_the_demo_preset_on_a_real_model_exports_with_builtin_paths_resolved(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    assert main(["export-kohya", "demo", "-o", str(tmp_path), "--set", "training.seed=7",
                 "--set", f"model.base_model={model}"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'config.toml'}" in out and "train_network.py --config_file" in out
    args = _flat((tmp_path / "config.toml").read_text("utf-8"))
    assert args["pretrained_model_name_or_path"] == str(model)
    assert args["seed"] == 7 and args["optimizer_type"] == "AdamW"
    assert args["dataset_config"] == str(tmp_path.resolve() / "dataset.toml")
    assert args["sample_prompts"] == str(tmp_path.resolve() / "prompts.txt")
    subsets = tomllib.loads((tmp_path / "dataset.toml").read_text("utf-8"))["datasets"][0]["subsets"]
    demo = resource_path("demo", "dataset")
    assert sorted(Path(s["image_dir"]).name for s in subsets) == sorted(
        p.name for p in demo.iterdir() if p.is_dir() and p.name[0].isdigit())
    prompts = (tmp_path / "prompts.txt").read_text("utf-8").splitlines()
    assert prompts[0].startswith("#") and prompts[1].endswith("--s 12 --d 1 --l 7.5")  # our defaults spelled out


def test_exported_files_import_back_to_the_same_settings(tmp_path):
    original = import_kohya([DATA / "sd_scripts_config.toml", DATA / "dataset_config.toml"]).config
    from core.kohya.export import write_export

    write_export(build_export(original, tmp_path), tmp_path)
    again = import_kohya([tmp_path / "config.toml"])  # config.toml names dataset.toml itself
    assert again.unsupported == [] and again.warnings == []
    # prompts.txt spells out LoRA Kiln's per-prompt defaults: the same prompts, longer lines
    defaults = original.sampling
    assert parse_prompts(again.config.sampling.prompts, defaults) == parse_prompts(original.sampling.prompts, defaults)
    original.sampling.prompts = again.config.sampling.prompts = ""
    assert dataclasses.asdict(again.config) == dataclasses.asdict(original)


def test_cli_export_refuses_a_bad_preset(tmp_path, capsys):
    assert main(["export-kohya", str(tmp_path / "nope.toml"), "-o", str(tmp_path)]) == 2
    assert "no preset file" in capsys.readouterr().err
    assert not (tmp_path / "config.toml").exists()


def test_preset_round_trip_through_the_cli(tmp_path, capsys):
    preset = tmp_path / "imported.toml"
    assert main(["import-kohya", str(SAMPLE_JSON), "-o", str(preset)]) == 0
    assert main(["export-kohya", str(preset), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "note: dataset.subsets[0].image_dir" in err  # D:/ does not exist on this machine
    args = _flat((tmp_path / "out" / "config.toml").read_text("utf-8"))
    assert args["network_dim"] == load_preset(preset).config.network.dim == 32
    assert pytest.approx(args["lr_warmup_steps"]) == 0.1


def test_every_schema_field_with_a_kohya_name_is_exported_under_that_name(tmp_path):
    # The counterpart of the importer's test: a field added to the schema with kohya= is written.
    from tests.test_kohya_import import _other_value

    config = TrainConfig()
    config.network.type = NetworkType.LOCON
    config.dataset.subsets = [SubsetParams()]
    expected: dict[str, Any] = {}
    for obj in [*(getattr(config, group) for group in GROUPS), config.dataset.subsets[0]]:
        for spec in param_specs(type(obj)):
            if spec.info.kohya and spec.name != "subsets":
                value = str(tmp_path) if spec.info.path is not PathKind.NONE else _other_value(spec)
                setattr(obj, spec.name, coerce_value(value, spec.type, spec.name))
                expected[spec.info.kohya] = value
    exported = build_export(config, tmp_path)
    args = _flat(exported.config_toml)
    doc = tomllib.loads(exported.dataset_toml)
    dataset = doc["datasets"][0]
    subset = {**doc.get("general", {}), **dataset["subsets"][0]}
    network_args = dict(parse_arg(a) for a in args["network_args"])
    for name, value in expected.items():
        if name == "max_train_epochs":
            continue  # only the length that decides is written (max_train_steps here)
        where = (network_args if name in ("conv_dim", "conv_alpha", *LORA_NETWORK_OPTIONS) else dataset if name in DATASET_KEYS
                 else subset if name in SUBSET_KEYS else args)
        assert name in where and _norm(where[name]) == _norm(value), name


@pytest.mark.parametrize("switch", ["fp8_base", "fp8_base_unet"])
def test_fp8_base_weights_are_exported_as_sd_scripts_arguments_and_read_back(tmp_path, switch):
    config = load_preset(resource_path("presets") / "sdxl-lora-8gb.toml").config
    setattr(config.model, switch, True)
    from core.kohya.export import write_export

    write_export(build_export(config, tmp_path), tmp_path)
    args = _flat((tmp_path / "config.toml").read_text("utf-8"))
    assert args[switch] is True and args["mixed_precision"] == "bf16"
    again = import_kohya([tmp_path / "config.toml"]).config
    assert (again.model.fp8_base, again.model.fp8_base_unet) == (config.model.fp8_base, config.model.fp8_base_unet)


@pytest.mark.parametrize("model", ["builtin:demo-model", "builtin:demo-sdxl"])
def test_a_preset_on_a_built_in_model_is_refused_naming_the_field_and_the_fix(tmp_path, capsys, model):
    # A built-in model is built by LoRA Kiln from a seed: no file or folder exists to name,
    # and sd-scripts could not load its toy-size U-Net anyway.
    assert main(["export-kohya", "demo", "-o", str(tmp_path), "--set", f"model.base_model={model}"]) == 2
    err = capsys.readouterr().err
    assert f"model.base_model is {model}" in err and "--set model.base_model=" in err
    assert not (tmp_path / "config.toml").exists()
