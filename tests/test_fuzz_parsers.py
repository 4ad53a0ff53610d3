"""Fuzzing the parsers of user files: presets, Kohya configs, sample prompts, captions.

Whatever a file holds, each parser either returns a usable result or raises its own error
with a message for people (PresetError, KohyaImportError, PromptError); a caption file is
always read. Structured strategies build files that are valid TOML or JSON with the wrong
types, unknown keys, huge numbers, NaN, unicode and deep nesting; raw bytes cover the rest.
The default example counts keep this file to a few seconds on two busy cores; the
``slow``-marked variants run many more.
"""

import json
import math
import string
import tempfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.kohya import import_keys as kohya_keys
from core.data.captions import (BLANK_FIRST_LINE_WARNING, EMPTY_FILE_WARNING, LEGACY_ENCODING_WARNING,
                           read_caption_file, split_tags, tag_frequency)
from core.config.schema import GROUPS, SamplingParams, SubsetParams, TrainConfig
from core.kohya.import_common import DIRECT, KohyaImportError
from core.kohya.import_config import import_kohya
from core.kohya.import_dataset import DATASET_KEYS, SUBSET_KEYS
from core.config.params import param_specs, range_problem, spec_for
from core.config.presets import MAX_NESTING, PresetError, config_from_dict, dumps_preset, load_preset, loads_preset
from core.config.prompts import PromptError, parse_prompts
from core.training.validation import _ranges


def fuzz(examples: int):
    """Hypothesis settings for one fuzz test: no deadline (the machine is shared), no
    example database written into the repository."""
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


FAST, LONG = 60, 1500

# ---------------------------------------------------------------- values

TRICKY_TEXT = ["", " ", "none", "None", "True", "false", "0", "0.0", "-1", "1e999", "-1e999", "nan", "inf",
               "512", "512,768", "(512, 768)", "1,2,3", "a=b", "x", "[1,2]", "{}", "AdamW8bit", "Prodigy",
               "Standard", "LoCon", "euler_a", "fp16", "cosine", "ñandú 画像", "\x00", "\u202e", "🔥" * 3,
               "a" * 300, "betas=0.9,0.99 weight_decay=0.1", "conv_dim=4 conv_alpha=1", "{[]: 1}",
               "lr=" + "(" * 60 + ")" * 60]
HUGE_INTS = st.sampled_from([2**31, 2**63, -(2**63) - 1, 2**64, 10**30, -10**30])
# TOML and JSON both hold whole numbers of any size, floats with NaN and infinities, text.
scalars = st.one_of(
    st.booleans(), st.integers(-5, 5000), HUGE_INTS, st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324]),
    st.text(max_size=12), st.sampled_from(TRICKY_TEXT),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(string.ascii_letters, max_size=6),
                                                                       inner, max_size=3)), max_leaves=8)
# Python values config_from_dict may be handed by code rather than by tomllib.
python_values = st.one_of(values, st.none(), st.tuples(scalars, scalars), st.just(object()))
random_keys = st.text(string.ascii_letters + "_", min_size=1, max_size=12)


def _deep(depth: int, style: str) -> str:
    if style == "array":
        return "[" * depth + "1" + "]" * depth
    if style == "json-object":
        return '{"a": ' * depth + "1" + "}" * depth
    return "{a = " * depth + "1" + "}" * depth  # TOML inline tables


# ---------------------------------------------------------------- presets

FIELDS = {group: [spec.name for spec in param_specs(cls)] for group, cls in GROUPS.items()}
SUBSET_FIELDS = [spec.name for spec in param_specs(SubsetParams)]


@st.composite
def preset_documents(draw, value_strategy=values):
    doc = {}
    if draw(st.booleans()):
        doc["schema_version"] = draw(st.one_of(st.integers(-2, 3), HUGE_INTS, value_strategy))
    if draw(st.integers(0, 4)) == 0:
        doc["description"] = draw(value_strategy)
    for group in draw(st.lists(st.sampled_from([*GROUPS, "trainig", "extra"]), max_size=4, unique=True)):
        names = FIELDS.get(group, []) + ["subsets", "dimm"]
        table = {}
        for name in draw(st.lists(st.one_of(st.sampled_from(names), random_keys), max_size=6)):
            if name == "subsets" and draw(st.booleans()):
                subset_keys = st.one_of(st.sampled_from(SUBSET_FIELDS), random_keys)
                table[name] = draw(st.lists(st.dictionaries(subset_keys, value_strategy, max_size=4), max_size=3))
            else:
                table[name] = draw(value_strategy)
        doc[group] = table if draw(st.integers(0, 9)) else draw(value_strategy)  # sometimes not a table
    return doc


def _check_preset_text(text: str) -> None:
    try:
        loaded = loads_preset(text, source="fuzz.toml", base_dir=Path("/fuzz"))
    except PresetError as error:
        assert error.problems and str(error).startswith("fuzz.toml: the preset cannot be used:")
        return
    # What loads is a configuration that saves and loads back the same, in range everywhere.
    assert _ranges(loaded.config) == []
    again = loads_preset(dumps_preset(loaded.config, description=loaded.description), base_dir=Path("/fuzz"))
    assert again.config == loaded.config and again.description == loaded.description


@fuzz(FAST)
@given(preset_documents())
def test_fuzzed_preset_documents_load_or_raise_preset_error(doc):
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError, OverflowError):  # TOML cannot hold it: not a file anyone has
        assume(False)
    _check_preset_text(text)


@fuzz(FAST)
@given(preset_documents(python_values))
def test_preset_dictionaries_from_code_load_or_raise_preset_error(doc):
    try:
        config, description = config_from_dict(doc, source="code")
    except PresetError as error:
        assert error.problems
        return
    assert isinstance(config, TrainConfig) and isinstance(description, str)


@fuzz(FAST)
@given(st.binary(max_size=400))
def test_any_bytes_as_a_preset_file_raise_only_preset_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_bytes(data)
        try:
            load_preset(path)
        except PresetError as error:
            assert str(path) in str(error)


@fuzz(FAST)
@given(st.text(alphabet=string.printable + "ñ画\u00a0\ufeff", max_size=300))
def test_any_text_as_a_preset_raises_only_preset_error(text):
    try:
        loads_preset(text)
    except PresetError:
        pass


@pytest.mark.parametrize("style", ["array", "toml-inline"])
@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 200, 5000])
def test_deeply_nested_and_huge_values_are_a_preset_error(style, depth):
    with pytest.raises(PresetError, match="nested"):
        loads_preset("[network]\ndim = " + _deep(depth, style))
    with pytest.raises(PresetError, match="thousands of digits"):
        loads_preset("[network]\ndim = " + "9" * 5000)


# ---------------------------------------------------------------- Kohya configs

KOHYA_NAMES = sorted(set(DIRECT) | set(DATASET_KEYS) | set(SUBSET_KEYS) | set(kohya_keys.UNSUPPORTED)
                     | set(kohya_keys.KEY_ALIASES) | set(kohya_keys.OFF_VALUES) | {
    "LoRA_type", "network_module", "network_args", "optimizer_args", "optimizer", "epoch", "lr_warmup",
    "lr_warmup_steps", "xformers", "sdpa", "mem_eff_attn", "cache_latents", "cache_latents_to_disk",
    "logging_dir", "log_with", "sample_prompts", "sample_sampler", "clip_skip", "save_last_n_epochs",
    "noise_offset", "noise_offset_type", "v2", "sdxl", "stop_text_encoder_training", "unet_lr",
    "text_encoder_lr", "network_train_unet_only", "network_train_text_encoder_only", "use_8bit_adam",
    "train_data_dir", "reg_data_dir", "dataset_config", "max_train_epochs", "max_train_steps"})
# Values with the spellings the importer reads specially, besides anything at all.
kohya_values = st.one_of(values, st.sampled_from(["networks.lora", "lycoris.kohya", "Kohya LoCon", "LyCORIS/LoCon",
                                                  "algo=locon conv_dim=8", "DAdaptation", "k_euler", "Multires",
                                                  "sdpa", "xformers", "all", "tensorboard", "./nowhere.toml",
                                                  "prompts.txt", "C:\\data\\img", "runwayml/sd-v1-5",
                                                  "org/" + "m" * 300, "x\x00y.txt", "a" * 5000 + ".toml"]))


@st.composite
def kohya_tables(draw):
    names = draw(st.lists(st.one_of(st.sampled_from(KOHYA_NAMES), random_keys), max_size=14, unique=True))
    return {name: draw(kohya_values) for name in names}


def _top_keys(result) -> set[str]:
    return {entry.key.split(".")[0] for entries in (result.mapped, result.unsupported, result.ignored)
            for entry in entries}


def _check_import(path: Path, top_keys: set[str] | None) -> None:
    try:
        result = import_kohya([path])
    except KohyaImportError as error:
        assert error.file == str(path) or str(path.name) in str(error) or error.file
        return
    if top_keys is not None:  # nothing dropped: every key of the file is reported
        assert top_keys <= _top_keys(result)
    # The importer range-checks what it sets: an imported configuration is never out of range.
    assert _ranges(result.config) == []


def _check_import_file(name: str, data: str | bytes, top_keys: set[str] | None) -> None:
    """Write ``data`` as a file called ``name`` in a fresh folder and check importing it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, "utf-8")
        _check_import(path, top_keys)


def _toml_or_skip(document: dict) -> str:
    """The TOML text of a generated document; examples TOML cannot express are skipped."""
    try:
        return tomli_w.dumps(document)
    except (TypeError, ValueError, OverflowError):
        assume(False)
        raise  # not reached: assume(False) ends the example


@fuzz(FAST)
@given(kohya_tables())
def test_fuzzed_kohya_ss_json_imports_or_raises_kohya_import_error(table):
    table.setdefault("LoRA_type", "Standard")
    # NaN and Infinity as Python's json writes them
    _check_import_file("kohya.json", json.dumps(table), set(table))


@fuzz(FAST)
@given(kohya_tables(), st.booleans())
def test_fuzzed_sd_scripts_config_toml_imports_or_raises_kohya_import_error(table, in_sections):
    document = {"training": table} if in_sections else table
    _check_import_file("config.toml", _toml_or_skip(document), None)


@fuzz(FAST)
@given(kohya_tables(), st.lists(st.tuples(kohya_tables(), st.lists(kohya_tables(), max_size=3)), max_size=3))
def test_fuzzed_dataset_config_toml_imports_or_raises_kohya_import_error(general, datasets):
    document = {"general": general,
                "datasets": [dict(table, subsets=subsets) for table, subsets in datasets]}
    _check_import_file("dataset.toml", _toml_or_skip(document), None)


@fuzz(FAST)
@given(st.binary(max_size=400), st.sampled_from(["config.json", "config.toml", "dataset.toml"]))
def test_any_bytes_as_a_kohya_file_raise_only_kohya_import_error(data, name):
    _check_import_file(name, data, None)


@pytest.mark.parametrize("name, text, expected", [
    ("deep.json", '{"LoRA_type": "Standard", "network_args": ' + _deep(5000, "array") + "}", "nested"),
    ("deep-object.json", '{"LoRA_type": ' + _deep(3000, "json-object") + "}", "nested"),
    ("nested.json", '{"LoRA_type": "Standard", "network_args": ' + _deep(MAX_NESTING + 1, "array") + "}",
     "nested"),
    ("deep.toml", "network_dim = " + _deep(5000, "array"), "nested"),
    ("inline.toml", "network_dim = " + _deep(3000, "toml-inline"), "nested"),
    ("digits.json", '{"LoRA_type": "Standard", "network_dim": ' + "9" * 5000 + "}", "thousands of digits"),
    ("digits.toml", "network_dim = " + "9" * 5000, "thousands of digits"),
])
def test_deep_nesting_and_huge_numbers_in_kohya_files_are_named(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    with pytest.raises(KohyaImportError, match=expected) as info:
        import_kohya([path])
    assert name in str(info.value)


@pytest.mark.parametrize("changes", [
    {"epoch": math.inf}, {"max_train_steps": "1e999"}, {"max_train_epochs": math.nan}, {"lr_warmup": math.inf},
    {"optimizer_args": "d0={[]: 1} betas=" + "(" * 300 + ")" * 300}, {"network_args": ["conv_dim={1: [2]}"]},
    {"learning_rate": 10**400}, {"network_alpha": 10**400}, {"unet_lr": 10**400}, {"clip_skip": -math.inf},
])
def test_values_that_once_crashed_the_kohya_import_are_reported_as_unsupported(tmp_path, changes):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"LoRA_type": "Standard", **changes}), "utf-8")
    result = import_kohya([path])
    key = next(iter(changes))
    assert key in {entry.key.split(".")[0] for entry in result.unsupported + result.ignored}
    assert _ranges(result.config) == []


@pytest.mark.parametrize("key, value", [("sample_prompts", "x\x00y.txt"), ("dataset_config", "a" * 5000),
                                        ("pretrained_model_name_or_path", "org/" + "m" * 300)])
def test_impossible_file_names_in_a_config_toml_are_reported_not_raised(tmp_path, key, value):
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps({key: value}), "utf-8")
    result = import_kohya([path])
    assert key in {entry.key for entry in result.mapped + result.unsupported + result.ignored}


# ---------------------------------------------------------------- sample prompts

OPTIONS = ["--w", "--h", "--s", "--l", "--d", "--n", "--ss", "--x", "--", "--W"]
OPTION_VALUES = ["512", "768", "513", "0", "-8", "64", "4096", "4104", "30", "7.5", "nan", "inf", "-inf", "1e400",
                 "9" * 50, "euler_a", "EULER-A", "k_euler", "ddim", "", "٥١٢", "five"]
prompt_lines = st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(OPTION_VALUES), st.text(max_size=8)),
                        max_size=10).map(lambda parts: " ".join(parts))


def _check_prompts(text: str) -> None:
    defaults = SamplingParams()
    try:
        prompts = parse_prompts(text, defaults)
    except PromptError as error:
        assert error.line_number >= 1 and str(error).startswith(f"sample prompt line {error.line_number}: ")
        return
    for prompt in prompts:
        assert prompt.prompt.strip() and prompt.width % 8 == 0 == prompt.height % 8
        for name in ("width", "height", "steps", "seed", "cfg_scale"):
            value = getattr(prompt, name)
            assert math.isfinite(value) and range_problem(value, spec_for(SamplingParams, name).info) is None


@fuzz(FAST)
@given(st.lists(prompt_lines, max_size=4).map("\n".join))
def test_fuzzed_prompt_options_parse_or_raise_prompt_error(text):
    _check_prompts(text)


@fuzz(FAST)
@given(st.text(max_size=200))
def test_any_text_as_prompts_parses_or_raises_prompt_error(text):
    _check_prompts(text)


# ---------------------------------------------------------------- captions

WARNINGS = {None, EMPTY_FILE_WARNING, BLANK_FIRST_LINE_WARNING, LEGACY_ENCODING_WARNING}
caption_bytes = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=120).flatmap(lambda text: st.sampled_from(
        [text.encode("utf-8"), b"\xef\xbb\xbf" + text.encode("utf-8"), text.encode("utf-16"),
         text.encode("utf-16-be", "replace"), text.encode("cp1252", "replace")])),
)


def _check_caption(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "img.txt"
        path.write_bytes(data)
        caption, warning = read_caption_file(path)
    assert isinstance(caption, str) and caption == caption.strip()
    assert "\n" not in caption and "\r" not in caption and warning in WARNINGS
    tags = split_tags(caption)
    assert all(tag and tag == tag.strip() and "," not in tag for tag in tags)
    assert sum(tag_frequency([caption]).values()) == len(tags)


@fuzz(FAST)
@given(caption_bytes)
def test_any_caption_file_is_read_with_at_most_a_warning(data):
    _check_caption(data)


# ---------------------------------------------------------------- longer runs


@pytest.mark.slow
@fuzz(LONG)
@given(preset_documents())
def test_long_fuzz_preset_documents(doc):
    try:
        text = tomli_w.dumps(doc)
    except (TypeError, ValueError, OverflowError):
        assume(False)
    _check_preset_text(text)


@pytest.mark.slow
@fuzz(LONG)
@given(kohya_tables())
def test_long_fuzz_kohya_ss_json(table):
    table.setdefault("LoRA_type", "Standard")
    _check_import_file("kohya.json", json.dumps(table), set(table))


@pytest.mark.slow
@fuzz(LONG)
@given(st.lists(prompt_lines, max_size=6).map("\n".join))
def test_long_fuzz_prompts(text):
    _check_prompts(text)


@pytest.mark.slow
@fuzz(LONG)
@given(caption_bytes)
def test_long_fuzz_captions(data):
    _check_caption(data)
