"""Presets: sparse TOML overlays that keep every field and refuse what they cannot read."""

import dataclasses
import enum
import math
import os
from pathlib import Path

import pytest

import core.config.presets as presets
from core.config.schema import GROUPS, SubsetParams, TrainConfig
from core.config.params import PathKind, optional_inner, param_specs
from core.config.presets import PresetError, dumps_preset, load_preset, loads_preset, save_preset


def _other_value(spec, tmp_path: Path):
    """A valid value different from the field's default, whatever the field's type."""
    tp, info, default = optional_inner(spec.type), spec.info, spec.default
    if info.path is not PathKind.NONE:
        return str(tmp_path / f"{spec.name} ü with space")
    if tp is bool:
        return not default
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(m for m in tp if m != default)
    if tp is int:
        return int(info.maximum) if default != info.maximum else int(info.minimum)
    if tp is float:
        low = info.minimum if info.minimum is not None else 0.0
        high = info.maximum if info.maximum is not None else low + 10.0
        value = low + (high - low) * 0.37
        return value if value != default else low
    if tp is str:
        return f"{spec.name}: ünïcode \"quoted\"\nsecond line"
    if tp == tuple[int, int]:
        return (640, 448)
    if tp == tuple[float, float]:
        return (0.85, 0.95)
    if spec.name == "extra_args":
        return {"relative_step": False, "scale_parameter": 2, "name": "x", "eps2": 1e-30}
    raise AssertionError(f"no test value for {spec.name}: {tp}")


def _everything_changed(tmp_path: Path) -> TrainConfig:
    config = TrainConfig()
    for group in GROUPS:
        obj = getattr(config, group)
        for spec in param_specs(type(obj)):
            if spec.name == "subsets":
                subsets = []
                for i in range(2):
                    subset = SubsetParams()
                    for sub_spec in param_specs(SubsetParams):
                        setattr(subset, sub_spec.name, _other_value(sub_spec, tmp_path / str(i)))
                    subsets.append(subset)
                obj.subsets = subsets
            else:
                setattr(obj, spec.name, _other_value(spec, tmp_path))
    return config


def test_every_field_survives_save_and_load(tmp_path):
    config = _everything_changed(tmp_path)
    assert config != TrainConfig()
    save_preset(config, tmp_path / "all.toml", description="every field")
    loaded = load_preset(tmp_path / "all.toml")
    for group in GROUPS:
        assert dataclasses.asdict(getattr(loaded.config, group)) == dataclasses.asdict(getattr(config, group)), group
    assert loaded.config == config
    assert loaded.description == "every field"


def test_defaults_are_not_written():
    text = dumps_preset(TrainConfig())
    assert text.strip() == f"schema_version = {presets.SCHEMA_VERSION}"


def test_only_changed_fields_are_written():
    config = TrainConfig()
    config.network.dim = 32
    doc = presets.config_to_dict(config)
    assert doc == {"schema_version": presets.SCHEMA_VERSION, "network": {"dim": 32}}


def test_unset_optional_learning_rate_round_trips_as_absent():
    config = TrainConfig()
    config.optimizer.unet_lr = 0.0002
    loaded = loads_preset(dumps_preset(config))
    assert loaded.config.optimizer.unet_lr == 0.0002
    assert loaded.config.optimizer.text_encoder_lr is None


def test_infinite_growth_rate_and_resolution_shorthand_load():
    loaded = loads_preset('[optimizer]\ngrowth_rate = inf\n[dataset]\nresolution = 768\n')
    assert math.isinf(loaded.config.optimizer.growth_rate)
    assert loaded.config.dataset.resolution == (768, 768)


def test_a_misspelt_key_is_refused_with_its_name_and_a_suggestion():
    with pytest.raises(PresetError) as err:
        loads_preset("[network]\nnetwork_dimm = 4\n", source="my.toml")
    assert err.value.problems == [("network.network_dimm", "unknown key")] or \
        err.value.problems[0][0] == "network.network_dimm"
    assert "my.toml" in str(err.value)


def test_a_close_misspelling_gets_a_did_you_mean():
    with pytest.raises(PresetError, match="did you mean 'dim'"):
        loads_preset("[network]\ndimm = 4\n")


def test_an_unknown_section_is_refused():
    with pytest.raises(PresetError, match="trainig: unknown section; did you mean 'training'"):
        loads_preset("[trainig]\nbatch_size = 2\n")


def test_a_value_out_of_range_is_refused_naming_the_field():
    with pytest.raises(PresetError) as err:
        loads_preset("[training]\nbatch_size = 0\n")
    assert err.value.problems == [("training.batch_size", "0 is below the minimum of 1")]


def test_every_problem_is_reported_at_once():
    with pytest.raises(PresetError) as err:
        loads_preset('[training]\nbatch_size = "two"\nseed = -1\n[optimizer]\ntype = "SGD"\n'
                     '[[dataset.subsets]]\nnum_repeats = 0\n')
    paths = [path for path, _ in err.value.problems]
    assert paths == ["training.batch_size", "training.seed", "optimizer.type",
                     "dataset.subsets[0].num_repeats"]


def test_a_preset_from_a_newer_version_is_refused_with_advice():
    with pytest.raises(PresetError, match="newer LoRA Kiln"):
        loads_preset(f"schema_version = {presets.SCHEMA_VERSION + 1}\n")


def test_an_old_preset_is_migrated(monkeypatch):
    # Pretend the schema moved on to version 2 by renaming network.rank to network.dim;
    # a version-1 file written with the old name must load through the migration.
    def rename_rank(doc):
        network = doc.get("network", {})
        if "rank" in network:
            network["dim"] = network.pop("rank")
        return doc

    monkeypatch.setattr(presets, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(presets.MIGRATIONS, 1, rename_rank)
    loaded = loads_preset("schema_version = 1\n[network]\nrank = 64\n")
    assert loaded.config.network.dim == 64
    assert dumps_preset(loaded.config).startswith("schema_version = 2")


def test_a_missing_migration_is_an_error_not_a_guess(monkeypatch):
    monkeypatch.setattr(presets, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(presets.MIGRATIONS, 2, lambda doc: doc)
    with pytest.raises(PresetError, match="no upgrade from schema 1"):
        loads_preset("schema_version = 1\n")


def test_broken_toml_is_reported_with_the_file_name(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[network\ndim = 4\n", encoding="utf-8")
    with pytest.raises(PresetError, match=r"(?s)broken.toml.*not valid TOML.*line 1"):
        load_preset(path)


def test_a_binary_file_is_refused_clearly(tmp_path):
    path = tmp_path / "model.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(PresetError, match="not UTF-8"):
        load_preset(path)


def test_relative_paths_are_read_relative_to_the_preset_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "p.toml"
    path.write_text('[[dataset.subsets]]\nimage_dir = "../images"\nkohya_layout = true\n'
                    '[[dataset.subsets]]\nimage_dir = "more"\n'
                    '[model]\nbase_model = "builtin:demo-model"\n', encoding="utf-8")
    config = load_preset(path).config
    assert Path(config.dataset.subsets[0].image_dir) == (tmp_path / "sub" / ".." / "images")
    assert Path(config.dataset.subsets[1].image_dir) == tmp_path / "sub" / "more"
    assert config.model.base_model == "builtin:demo-model"


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "p.toml"
    first = TrainConfig()
    first.network.dim = 16
    save_preset(first, path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    second = TrainConfig()
    second.network.dim = 64
    with pytest.raises(OSError):
        save_preset(second, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]  # no temporary file left


@pytest.mark.parametrize("name", ["demo", "sd15-lora-8gb", "sd15-prodigy", "sdxl-lora-8gb", "sdxl-prodigy"])
def test_builtin_presets_load(name):
    loaded = load_preset(presets.find_preset(name))
    assert loaded.description


def test_builtin_preset_names_are_listed():
    assert {"demo", "sd15-lora-8gb", "sd15-prodigy"} <= set(presets.builtin_preset_names())


def test_an_unknown_preset_name_lists_the_builtin_ones():
    with pytest.raises(PresetError, match="built-in presets: demo"):
        presets.find_preset("no-such-preset")


def test_fp8_base_weights_round_trip_through_a_preset():
    loaded = loads_preset("schema_version = 1\n[model]\nfp8_base = true\nfp8_base_unet = true\n")
    assert loaded.config.model.fp8_base and loaded.config.model.fp8_base_unet
    assert presets.config_to_dict(loaded.config)["model"] == {"fp8_base": True, "fp8_base_unet": True}
    assert loads_preset(dumps_preset(loaded.config)).config == loaded.config
