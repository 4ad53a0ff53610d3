"""``lorakiln grid``: a PNG from run folders or LoRA files, and clear refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from core.cli.main import main
from core.config.schema import DEMO_MODEL
from core.studies.grid import PNG_KEY
from core.training.engine import Trainer
from core.training.events import Finished, ListSink
from tests.engine_fixtures import tiny_config
from tests.test_grid import make_run, placeholder_lora, write_lora


def _recorded(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[PNG_KEY])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real training run of 4 steps with a checkpoint every 2 and two sample prompts."""
    root = tmp_path_factory.mktemp("trained")
    config = tiny_config(root, steps=4)
    config.output.save_every_n_steps = 2
    config.sampling.prompts = "kiln, vase --w 64 --h 64 --s 2 --d 1\nkiln, bowl --w 64 --h 64 --s 2 --d 2\n"
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Finished) and result.reason == "completed"
    return Path(result.run_dir)


@pytest.mark.slow
def test_a_runs_checkpoints_by_its_sample_prompts_need_no_other_flags(trained_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["grid", str(trained_run), "--checkpoints", "--base-row", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    recorded = _recorded(out)
    labels = [row["label"] for row in recorded["rows"]]
    assert labels[0] == "base model" and labels[-1] == "final" and "step 2" in labels
    steps = [int(label.split()[1]) for label in labels[1:-1]]
    assert steps == sorted(steps) and len(steps) >= 1
    assert recorded["base_model"] == DEMO_MODEL and [p["prompt"] for p in recorded["prompts"]] == ["kiln, vase",
                                                                                                  "kiln, bowl"]
    total = len(labels) * 2
    assert [line for line in printed if line.startswith("cell ")] == [f"cell {n}/{total}" for n in range(1, total + 1)]
    assert printed[-1] == str(out)


@pytest.mark.slow
def test_a_lora_file_outside_a_run_uses_the_base_its_metadata_names(tmp_path, capsys):
    lora = write_lora(tmp_path / "loras" / "style.safetensors")
    out = tmp_path / "seeds.png"
    code = main(["grid", str(lora), "--prompt", "a kiln --w 64 --h 64", "--steps", "2", "--seeds", "1,2",
                 "--strength", "0.5", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    recorded = _recorded(out)
    assert recorded["base_model"] == DEMO_MODEL and recorded["column_kind"] == "seeds"
    assert recorded["columns"] == ["seed 1", "seed 2"] and recorded["strength"] == 0.5
    assert recorded["rows"] == [{"label": "style", "lora": str(lora)}] and recorded["prompts"][0]["steps"] == 2
    assert "cell 2/2" in capsys.readouterr().out


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path, "kiln")


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "1,2", "--columns", "prompts"], "--seeds makes seeds columns; it does not go with --columns prompts"),
    (["--columns", "seeds"], "--columns seeds needs the seeds"),
    (["--seeds", "1", "--sizes", "64x64"], "--seeds and --sizes both make the columns"),
    (["--prompt", "a cat --x 2"], "--prompt 1 ('a cat --x 2'): unknown option --x"),
    (["--prompts-file", "missing.txt"], "missing.txt: cannot read the prompts file"),
])
def test_options_that_do_not_fit_exit_2_with_a_message(run_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "grid.png"
    assert main(["grid", str(run_dir), *extra, "-o", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_checkpoints_take_one_run_folder(run_dir, tmp_path, capsys):
    lora = run_dir / "kiln.safetensors"
    for sources in ([run_dir, run_dir], [lora]):
        assert main(["grid", *map(str, sources), "--checkpoints", "-o", str(tmp_path / "g.png")]) == 2
        assert "--checkpoints takes exactly one run folder" in capsys.readouterr().err


def test_sources_that_are_not_runs_or_loras_are_named(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for source, message in ((tmp_path / "nowhere", "nowhere: no such run folder or LoRA file"),
                            (notes, "notes.txt: not a run folder or a LoRA file"),
                            (tmp_path, "not a run folder (it has no config.toml)")):
        assert main(["grid", str(source), "-o", str(tmp_path / "g.png")]) == 2
        assert message in capsys.readouterr().err


def test_a_lora_whose_base_model_is_not_here_needs_base(tmp_path, capsys):
    lora = placeholder_lora(tmp_path / "x.safetensors", metadata={"ss_sd_model_name": "v1-5-pruned.safetensors"})
    assert main(["grid", str(lora), "--prompt", "a cat", "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert ("x.safetensors: which base model? its metadata names 'v1-5-pruned.safetensors', which is not a file "
            "here") in err
    assert "--base MODEL" in err


def test_a_run_without_sample_prompts_asks_for_prompts_and_a_jpg_for_png(tmp_path, capsys):
    run = make_run(tmp_path, "quiet", prompts="")
    assert main(["grid", str(run), "-o", str(tmp_path / "g.png")]) == 2
    assert "no prompts: the run has no sample prompts; give some with --prompt TEXT" in capsys.readouterr().err
    assert main(["grid", str(run), "--prompt", "a cat", "-o", str(tmp_path / "g.jpg")]) == 2
    assert "g.jpg: the grid is saved as a PNG" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--sizes", "65x64"], ["--seeds", "1,x"], ["--strength", "nan"], ["--steps", "0"]])
def test_malformed_numbers_are_refused_by_the_parser(run_dir, tmp_path, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(["grid", str(run_dir), *bad, "-o", str(tmp_path / "g.png")])
    assert exit_info.value.code == 2
