"""The lorakiln command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from core import __version__
from core.cli.main import SUBCOMMANDS, main
from core.config.presets import load_preset

ROOT = Path(__file__).resolve().parent.parent


def _lorakiln(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_version():
    result = _lorakiln("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"LoRA Kiln {__version__}"


def test_help_lists_every_subcommand():
    result = _lorakiln("--help")
    assert result.returncode == 0
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_check_accepts_the_demo_preset(capsys):
    assert main(["check", "demo"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_check_reports_validation_errors_and_fails(capsys):
    assert main(["check", "sd15-lora-8gb"]) == 1
    out = capsys.readouterr().out
    assert "model.base_model: choose a base model" in out


def test_set_overrides_apply_and_can_be_saved(tmp_path, capsys):
    out_file = tmp_path / "mine.toml"
    code = main(["check", "demo", "--set", "training.batch_size=3", "--set", "network.dim=16",
                 "-o", str(out_file)])
    assert code == 0
    config = load_preset(out_file).config
    assert (config.training.batch_size, config.network.dim) == (3, 16)
    assert config.dataset.subsets[0].image_dir == "builtin:demo/dataset"


def test_bad_overrides_are_all_named(capsys):
    assert main(["check", "demo", "--set", "training.batch_size=0", "--set", "network.dimm=2"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size: 0 is below the minimum of 1" in err
    assert "network.dimm: unknown field; did you mean 'dim'?" in err


def test_print_full_writes_every_group(capsys):
    assert main(["check", "demo", "--print", "full"]) == 0
    out = capsys.readouterr().out
    for group in ("[model]", "[dataset]", "[network]", "[optimizer]", "[schedule]", "[training]",
                  "[output]", "[sampling]", "[logging]"):
        assert group in out


def test_a_missing_preset_is_a_clear_error(capsys):
    assert main(["check", "no/such/file.toml"]) == 2
    assert "no preset file 'no/such/file.toml'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["gui"]])
def test_no_arguments_opens_the_gui(monkeypatch, argv):
    import gui.app
    opened = []
    monkeypatch.setattr(gui.app, "run", lambda preset=None: opened.append(preset) or 0)
    assert main(argv) == 0
    assert opened == [None]


def test_train_progress_prints_to_the_current_stdout_and_names_skipped_steps(capsys):
    from core.cli.train import Progress
    from core.training.events import StepSkipped

    progress = Progress(quiet=False)  # made after capsys replaced sys.stdout: must write there
    progress.emit(StepSkipped(step=7, epoch=1, loss=float("nan"), in_a_row=2, skipped_total=3))
    assert capsys.readouterr().out == "step 7 skipped: loss nan is not finite (2 in a row, 3 in all)\n"
