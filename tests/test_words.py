"""Counts read as words ("1 image", "2 images"), the import report's counts match its lists,
and a preset saved from a built-in one gets its own description."""

import json

import pytest
from PIL import Image

from core.config.presets import find_preset, load_preset
from core.config.schema import SubsetParams, TrainConfig
from core.data.plan import plan_dataset
from core.data.plan_report import format_plan
from core.kohya.import_config import import_kohya
from core.system.words import agree, count
from gui.main_window import DISCARD, MainWindow, settings
from gui.project import Project


@pytest.mark.parametrize(("n", "text"), [(0, "0 images"), (1, "1 image"), (2, "2 images")])
def test_a_count_says_one_thing_or_many(n, text):
    assert count(n, "image") == text


def test_an_irregular_plural_and_the_verb_that_goes_with_it():
    assert count(1, "batch", "batches") == "1 batch" and count(3, "batch", "batches") == "3 batches"
    assert agree(1, "is", "are") == "is" and agree(2, "is", "are") == "are"


def test_the_plan_of_one_image_speaks_of_one_image(tmp_path):
    Image.new("RGB", (100, 60)).save(tmp_path / "a.png")
    config = TrainConfig()
    config.dataset.subsets = [SubsetParams(image_dir=str(tmp_path), class_tokens="cat")]
    text = format_plan(plan_dataset(config.dataset, config.training))
    assert "1 image (1 with repeats) falls into 1 bucket at" in text
    assert "1 image was checked by its header only" in text and "(s)" not in text


@pytest.fixture
def window(qtbot):
    settings().clear()
    w = MainWindow()
    qtbot.addWidget(w)
    w.messages = []
    w.show_message = lambda title, text: w.messages.append((title, text))
    w.ask_unsaved = lambda: DISCARD
    w.ask_stop_training = lambda: True
    return w


def test_the_import_reports_counts_match_its_lists(window, tmp_path):
    values = {"LoRA_type": "Standard", "network_dim": 8, "model_list": "custom-x"}
    values.update({f"unknown_option_{i}": i + 1 for i in range(45)})  # more than a screenful
    path = tmp_path / "k.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    result = import_kohya([path])
    assert window.import_kohya([str(path)])
    report = window.last_import_report.splitlines()
    assert report[0] == f"{result.summary()}."

    def listed(heading: str) -> list[str]:
        start = next(i for i, line in enumerate(report) if line.startswith(heading))
        assert report[start].endswith(f"({sum(1 for _ in _items(report, start))}):")
        return list(_items(report, start))

    assert len(listed("Not supported by LoRA Kiln")) == len(result.unsupported) > 40
    assert len(listed("Mapped")) == len(result.mapped)
    if result.ignored:
        assert len(listed("Ignored")) == len(result.ignored)


def _items(report, start):
    for line in report[start + 1:]:
        if not line.startswith("  "):
            return
        yield line


def test_a_preset_saved_from_the_demo_gets_its_own_description(tmp_path):
    project = Project()
    demo = load_preset(find_preset("demo"))
    project.load(demo, builtin=True)
    project.save(tmp_path / "mine.toml")
    saved = load_preset(tmp_path / "mine.toml")
    assert saved.description != demo.description
    assert saved.description == "Started from the built-in demo preset."
    project.description = "my pottery run"
    project.save(tmp_path / "mine.toml")  # the person's own preset keeps what they wrote
    assert load_preset(tmp_path / "mine.toml").description == "my pottery run"


@pytest.mark.parametrize(("argv", "verdict"), [
    (["demo", "--set", "schedule.warmup_steps=10", "--set", "schedule.warmup_ratio=0.1"],
     "1 error: training would not start"),  # warm-up given twice
    (["sd15-lora-8gb"], "2 errors: training would not start")])  # no base model, no image folder
def test_the_check_command_counts_its_errors_in_words(capsys, argv, verdict):
    from core.cli.main import main

    assert main(["check", *argv]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == verdict


@pytest.mark.parametrize(("names", "start"), [(["a.png"], "1 image has no mask in masks: a.png;"),
                                              (["a.png", "b.png"], "2 images have no mask in masks: a.png, b.png;")])
def test_the_missing_masks_message_counts_in_words(tmp_path, names, start):
    from core.data.masks import missing_masks_message

    assert missing_masks_message([tmp_path / n for n in names], "masks").startswith(start)
