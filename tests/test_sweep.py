"""Sweeps: --vary parsing, one checked configuration per value, and the sweep record."""

import math
import re

import pytest

from core.config.schema import Duration
from core.config.presets import dumps_preset
from core.studies.sweep import (SweepError, SweepSpec, parse_vary, read_sweep_record, sweep_configs, value_suffix,
                        write_sweep_record)
from tests.engine_fixtures import tiny_config


@pytest.mark.parametrize("text, field, values", [
    ("dataset.resolution=512,768,1024,1280", "dataset.resolution", ("512", "768", "1024", "1280")),
    ("optimizer.growth_rate=1.02, inf", "optimizer.growth_rate", ("1.02", "inf")),
    ("dataset.resolution=[768,512],[512, 768]", "dataset.resolution", ("[768,512]", "[512, 768]")),
    ("dataset.subsets.0.num_repeats=1,2", "dataset.subsets[0].num_repeats", ("1", "2")),
    ("dataset.subsets[1].num_repeats=3,4", "dataset.subsets[1].num_repeats", ("3", "4")),
    ('sampling.prompts="a, b","c"', "sampling.prompts", ('"a, b"', '"c"')),
])
def test_vary_keeps_the_values_as_typed(text, field, values):
    assert parse_vary(text) == SweepSpec(field, values)


@pytest.mark.parametrize("text, message", [
    ("network.dim", "expected group.field=value1,value2"),
    ("network.dimm=2,4", "network.dimm: unknown field; did you mean 'dim'"),
    ("trainig.seed=1,2", "unknown group; did you mean 'training'"),
    ("network.dim=4", "network.dim: a sweep needs at least two values, got 1"),
    ("network.dim=4,8,4", "network.dim: the value 4 is given twice"),
    ("network.dim=4,,8", "network.dim: empty value"),
    ("output.output_name=a,b", "output.output_name: cannot be swept"),
    ("output.output_dir=/a,/b", "output.output_dir: cannot be swept"),
    ("dataset.subsets.num_repeats=1,2", "give the subset's index"),
    ("dataset.subsets=1,2", "unknown field"),
    ("network.dim.x=1,2", "expected group.field"),
])
def test_vary_errors_name_the_field(text, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        parse_vary(text)


@pytest.mark.parametrize("text, suffix", [
    ("dataset.resolution=768,512", "resolution-768"),
    ("dataset.resolution=[768, 512],512", "resolution-768x512"),
    ("optimizer.growth_rate=inf,1.02", "growth_rate-inf"),
    ("optimizer.learning_rate=1e-4,1", "learning_rate-1e-4"),
    ('sampling.prompts="a cat: on/a mat?",x', "prompts-a_cat_on_a_mat"),
    ("dataset.subsets[0].num_repeats=5,6", "num_repeats-5"),
])
def test_value_suffixes_are_readable_and_safe_in_file_names(text, suffix):
    spec = parse_vary(text)
    assert value_suffix(spec, spec.values[0]) == suffix
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", suffix)


def test_each_value_gets_a_named_copy_of_the_base(tmp_path):
    base = tiny_config(tmp_path)
    before = dumps_preset(base, sparse=False)
    runs = sweep_configs(base, parse_vary("dataset.resolution=64,[96,64]"))
    assert [label for label, _ in runs] == ["dataset.resolution=64", "dataset.resolution=[96,64]"]
    assert [c.dataset.resolution for _, c in runs] == [(64, 64), (96, 64)]
    assert [c.output.output_name for _, c in runs] == ["tiny_resolution-64", "tiny_resolution-96x64"]
    assert dumps_preset(base, sparse=False) == before  # the base is not touched
    runs[0][1].dataset.subsets[0].num_repeats = 9  # nor shared between the copies
    assert runs[1][1].dataset.subsets[0].num_repeats == base.dataset.subsets[0].num_repeats == 1


def test_infinite_growth_rate_and_subset_fields_apply(tmp_path):
    runs = sweep_configs(tiny_config(tmp_path), parse_vary("optimizer.growth_rate=1.02,inf"))
    assert runs[0][1].optimizer.growth_rate == 1.02 and math.isinf(runs[1][1].optimizer.growth_rate)
    assert runs[1][1].output.output_name == "tiny_growth_rate-inf"
    runs = sweep_configs(tiny_config(tmp_path / "b"), parse_vary("dataset.subsets[0].num_repeats=2,3"))
    assert [c.dataset.subsets[0].num_repeats for _, c in runs] == [2, 3]


def test_every_bad_value_is_reported_at_once(tmp_path):
    with pytest.raises(SweepError) as caught:
        sweep_configs(tiny_config(tmp_path), parse_vary("network.dim=4,0,many"))
    assert caught.value.problems == ["0: network.dim: 0 is below the minimum of 1",
                                     "many: network.dim: expected a whole number, got 'many'"]
    assert "the sweep of network.dim cannot run" in str(caught.value)


def test_values_that_mean_the_same_are_refused(tmp_path):
    with pytest.raises(SweepError, match=re.escape("[64,64]: means the same as 64")):
        sweep_configs(tiny_config(tmp_path), parse_vary("dataset.resolution=64,[64,64]"))


def test_a_subset_the_base_lacks_is_refused(tmp_path):
    with pytest.raises(SweepError, match="has 1 subset"):
        sweep_configs(tiny_config(tmp_path), parse_vary("dataset.subsets[1].num_repeats=1,2"))


def test_validation_failures_are_listed_by_value(tmp_path):
    base = tiny_config(tmp_path, steps=6)
    assert base.training.duration is Duration.STEPS
    with pytest.raises(SweepError) as caught:
        sweep_configs(base, parse_vary("schedule.warmup_steps=2,6,10"))
    assert caught.value.problems == [
        "6: schedule.warmup_steps: warmup (6 steps) is not shorter than training (6 steps)",
        "10: schedule.warmup_steps: warmup (10 steps) is not shorter than training (6 steps)",
    ]


def test_a_problem_of_the_base_is_named_once(tmp_path):
    base = tiny_config(tmp_path)
    base.dataset.subsets[0].image_dir = str(tmp_path / "gone")
    with pytest.raises(SweepError) as caught:
        sweep_configs(base, parse_vary("network.dim=2,4"))
    assert caught.value.problems == [f"every value: dataset.subsets[0].image_dir: '{tmp_path / 'gone'}' does not exist"]


def test_sweep_record_round_trip(tmp_path):
    spec = parse_vary("dataset.resolution=512,768")
    runs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    path = write_sweep_record(tmp_path / "runs", spec, runs, when=1_700_000_000)
    assert path.parent == tmp_path / "runs" / "sweeps"
    assert re.fullmatch(r"\d{8}-\d{6}-dataset\.resolution\.json", path.name)
    record = read_sweep_record(path)
    assert (record.field, record.values, record.run_dirs) == ("dataset.resolution", ("512", "768"), tuple(runs))
    assert record.created_at == 1_700_000_000
    again = write_sweep_record(tmp_path / "runs", spec, runs[:1], when=1_700_000_000)
    assert again != path and read_sweep_record(path).run_dirs == tuple(runs)  # the first is kept


def test_a_subset_field_gives_a_safe_record_name(tmp_path):
    path = write_sweep_record(tmp_path, parse_vary("dataset.subsets[0].num_repeats=1,2"), [])
    assert re.fullmatch(r"\d{8}-\d{6}-dataset\.subsets_0_\.num_repeats\.json", path.name)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"version": 1, "field": "x"}', "not a sweep record"),
    ('{"version": 7, "field": "x", "values": [], "run_dirs": []}', "newer LoRA Kiln"),
    ("[1, 2]", "expected a JSON object"),
])
def test_an_unusable_sweep_record_names_the_file(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(SweepError, match=message) as caught:
        read_sweep_record(path)
    assert str(path) in str(caught.value)


def test_a_missing_sweep_record_names_the_file(tmp_path):
    with pytest.raises(SweepError, match=re.escape(f"{tmp_path / 'no.json'}: cannot read")):
        read_sweep_record(tmp_path / "no.json")
