"""lorakiln plan: the table, the JSON, and the errors."""

import json
import os
from pathlib import Path

from PIL import Image

from core.cli.main import main
from tests.damaged_images import garbage_png

DEMO = str(Path(__file__).resolve().parent.parent / "resources" / "demo" / "dataset")


def _image(path: Path, size) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


def _json(capsys, *argv):
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_paths_are_as_found_under_the_dataset_dir(capsys, tmp_path, monkeypatch):
    _image(tmp_path / "data" / "10_cat" / "a.png", (512, 768))
    monkeypatch.chdir(tmp_path)
    doc = _json(capsys, "data", "--resolution", "512")
    assert doc["images"][0]["path"] == os.path.join("data", "10_cat", "a.png")
    assert doc["images"][0]["repeats"] == 10


def test_a_plain_folder_of_images_is_one_subset_with_one_repeat(capsys, tmp_path):
    _image(tmp_path / "a.png", (512, 512))
    _image(tmp_path / "b.png", (512, 512))
    doc = _json(capsys, str(tmp_path))
    assert [i["repeats"] for i in doc["images"]] == [1, 1]


def test_options_change_the_plan(capsys):
    default = _json(capsys, DEMO, "--resolution", "512")
    changed = _json(capsys, DEMO, "--resolution", "768,512", "--batch-size", "4", "--epochs", "3",
                    "--max-bucket-reso", "1024", "--grad-accum", "2")
    assert default["buckets"] != changed["buckets"]
    assert changed["epochs"] == 3
    assert changed["max_train_steps"] == 3 * -(-changed["batches_per_epoch"] // 2)


def test_no_upscale_and_no_buckets(capsys):
    no_up = _json(capsys, DEMO, "--resolution", "512", "--no-upscale")
    off = _json(capsys, DEMO, "--resolution", "512", "--no-buckets")
    assert [b["resolution"] for b in off["buckets"]] == [[512, 512]]
    assert len(no_up["buckets"]) > 6  # small images make buckets of their own size


def test_max_train_steps_default_is_sd_scripts_1600(capsys):
    doc = _json(capsys, DEMO)
    assert doc["max_train_steps"] == 1600
    assert doc["epochs"] == -(-1600 // doc["batches_per_epoch"])


def test_preset_settings_are_used_and_the_dataset_dir_replaces_its_folders(capsys, tmp_path):
    _image(tmp_path / "2_x" / "a.png", (256, 256))
    doc = _json(capsys, str(tmp_path), "--preset", "demo")
    assert doc["buckets"] == [{"resolution": [256, 256], "count": 2}]  # demo: 256 px, 3 epochs
    assert doc["epochs"] == 3


def test_the_table_explains_the_plan(capsys):
    assert main(["plan", DEMO, "--resolution", "1024", "--max-bucket-reso", "2048", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "bucket  aspect  images  batches" in out
    assert "fall into" in out and "enlarged" in out and "batches never mix buckets" in out


def test_the_table_and_the_json_say_the_images_were_checked_by_their_headers_only(capsys, tmp_path):
    _image(tmp_path / "a.png", (512, 512))
    garbage_png(tmp_path / "b.png", (512, 512))  # a sound header over garbage data
    assert main(["plan", str(tmp_path)]) == 0
    assert ("2 images were checked by their headers only; a damaged image is found when it is first "
            "decoded (caching latents or training)") in capsys.readouterr().out
    assert _json(capsys, str(tmp_path))["header_checked"] == 2


def test_errors_name_the_problem(capsys, tmp_path):
    assert main(["plan", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plan", DEMO, "--resolution", "128"]) == 2
    assert "min_bucket_reso" in capsys.readouterr().err
    assert main(["plan", DEMO, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert main(["plan"]) == 2
