"""The dataset plan: the numbers the trainer trains by, and the warnings a person needs."""

from pathlib import Path

import pytest
from PIL import Image

from core.data.buckets import BucketError
from core.config.schema import DatasetParams, Duration, SubsetParams, TrainingParams
from core.data.plan import plan_dataset, plan_to_json
from tests.damaged_images import garbage_png


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 100, 50)).save(path)
    return path


def _kohya(root: Path, **data_options) -> DatasetParams:
    return DatasetParams(subsets=[SubsetParams(image_dir=str(root), kohya_layout=True)], **data_options)


def _training(batch_size=1, epochs=None, steps=None, grad_accum=1) -> TrainingParams:
    training = TrainingParams(batch_size=batch_size, gradient_accumulation_steps=grad_accum)
    if epochs is not None:
        training.duration, training.max_train_epochs = Duration.EPOCHS, epochs
    if steps is not None:
        training.duration, training.max_train_steps = Duration.STEPS, steps
    return training


def test_the_worked_example_gives_44_batches_not_43(tmp_path):
    # 70, 50, 30 and 20 images (with repeats) in four buckets at batch size 4:
    # 18 + 13 + 8 + 5 = 44 batches, where 170 / 4 rounded up would say 43.
    for repeats, size in ((70, (512, 512)), (50, (384, 640)), (30, (640, 384)), (20, (448, 576))):
        _image(tmp_path / f"{repeats}_c" / "a.png", size)
    plan = plan_dataset(_kohya(tmp_path), _training(batch_size=4, epochs=1))
    assert plan.buckets == {(384, 640): 50, (448, 576): 20, (512, 512): 70, (640, 384): 30}
    assert plan.batches_per_epoch == 44
    assert any("not 170/4 rounded up = 43" in note for note in plan.notes)


def test_epochs_give_steps_and_steps_give_epochs(tmp_path):
    for i in range(10):
        _image(tmp_path / "1_c" / f"{i}.png", (512, 512))
    by_epochs = plan_dataset(_kohya(tmp_path), _training(batch_size=2, epochs=3, grad_accum=2))
    assert (by_epochs.steps.steps_per_epoch, by_epochs.steps.max_train_steps) == (3, 9)
    by_steps = plan_dataset(_kohya(tmp_path), _training(batch_size=2, steps=7))
    assert (by_steps.steps.epochs, by_steps.steps.stops_mid_epoch) == (2, True)
    assert any("ends epoch 2 after 2 of its 5 steps" in note for note in by_steps.notes)


def test_regularisation_images_are_topped_up_round_robin(tmp_path):
    for i in range(5):
        _image(tmp_path / "train" / "2_dog" / f"{i}.png", (512, 512))  # 10 with repeats
    for i in range(3):
        _image(tmp_path / "reg" / "1_dog" / f"r{i}.png", (512, 512))
    data = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path / "train"), kohya_layout=True),
                                  SubsetParams(image_dir=str(tmp_path / "reg"), kohya_layout=True, is_reg=True)])
    plan = plan_dataset(data, _training(epochs=1))
    assert [i.repeats for i in plan.images if i.record.is_reg] == [4, 3, 3]
    assert (plan.num_train_images, plan.num_reg_images) == (10, 10)
    assert plan.batches_per_epoch == 20  # "reg doubles the steps"


def test_surplus_regularisation_images_are_listed_as_unused_not_dropped(tmp_path):
    _image(tmp_path / "train" / "2_dog" / "a.png", (512, 512))
    for i in range(4):
        _image(tmp_path / "reg" / "1_dog" / f"r{i}.png", (512, 512))
    data = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path / "train"), kohya_layout=True),
                                  SubsetParams(image_dir=str(tmp_path / "reg"), kohya_layout=True, is_reg=True)])
    plan = plan_dataset(data, _training(epochs=1))
    assert [i.record.path.name for i in plan.images if i.record.is_reg] == ["r0.png", "r1.png"]
    assert [(s.path.name, "not needed" in s.reason) for s in plan.skipped] == [("r2.png", True), ("r3.png", True)]


def test_broken_files_are_skipped_with_their_reason(tmp_path):
    _image(tmp_path / "1_c" / "good.png", (512, 512))
    (tmp_path / "1_c" / "empty.png").write_bytes(b"")
    (tmp_path / "1_c" / "notes.jpg").write_text("not an image")
    plan = plan_dataset(_kohya(tmp_path), _training(epochs=1))
    assert [i.record.path.name for i in plan.images] == ["good.png"]
    assert {s.path.name for s in plan.skipped} == {"empty.png", "notes.jpg"}
    assert all(s.reason for s in plan.skipped)


def test_an_image_too_small_for_no_upscale_buckets_is_skipped_with_the_reason(tmp_path):
    _image(tmp_path / "1_c" / "ok.png", (512, 512))
    _image(tmp_path / "1_c" / "sliver.png", (40, 300))
    plan = plan_dataset(_kohya(tmp_path, bucket_no_upscale=True), _training(epochs=1))
    assert [s.path.name for s in plan.skipped] == ["sliver.png"]
    assert "bucket step" in plan.skipped[0].reason


def test_without_buckets_everything_goes_to_one_bucket(tmp_path):
    _image(tmp_path / "1_c" / "a.png", (1024, 512))
    _image(tmp_path / "1_c" / "b.png", (300, 900))
    plan = plan_dataset(_kohya(tmp_path, enable_bucket=False), _training(epochs=1))
    assert plan.buckets == {(512, 512): 2}
    assert [i.assignment.resized for i in plan.images] == [(1024, 512), (512, 1536)]


def test_warnings_name_small_buckets_single_images_upscaling_and_tiny_images(tmp_path):
    for i in range(3):
        _image(tmp_path / "1_c" / f"sq{i}.png", (1024, 1024))
    _image(tmp_path / "1_c" / "tall.png", (512, 1024))
    _image(tmp_path / "1_c" / "tiny.png", (100, 100))
    plan = plan_dataset(_kohya(tmp_path), _training(batch_size=4, epochs=1))
    text = "\n".join(plan.warnings)
    assert "fewer images than the batch size 4" in text
    assert "single image" in text and "tall.png" in text
    assert "enlarged" in text and "tiny.png (100x100 -> 512x512)" in text
    assert "smaller than the minimum bucket side (256 px): tiny.png" in text


def test_higher_resolution_splits_the_data_into_more_buckets(tmp_path):
    sizes = [(862, 862), (600, 900), (900, 600), (1280, 720), (720, 1280), (1000, 750), (500, 1000)]
    for i, size in enumerate(sizes):
        _image(tmp_path / "1_c" / f"{i}.png", size)
    low = plan_dataset(_kohya(tmp_path, resolution=(512, 512)), _training(epochs=1))
    high = plan_dataset(_kohya(tmp_path, resolution=(1024, 1024), max_bucket_reso=2048), _training(epochs=1))
    assert len(high.buckets) >= len(low.buckets)
    assert all(max(b) <= 1024 for b in low.buckets) and any(max(b) > 1024 for b in high.buckets)


def test_impossible_bucket_settings_raise_a_named_error(tmp_path):
    _image(tmp_path / "1_c" / "a.png", (512, 512))
    with pytest.raises(BucketError) as err:
        plan_dataset(_kohya(tmp_path, resolution=(128, 128)), _training(epochs=1))
    assert err.value.field == "resolution"


def test_json_has_the_documented_shape(tmp_path):
    _image(tmp_path / "3_c" / "a.png", (640, 384))
    (tmp_path / "3_c" / "bad.png").write_bytes(b"")
    doc = plan_to_json(plan_dataset(_kohya(tmp_path), _training(batch_size=2, epochs=2)))
    assert set(doc) == {"buckets", "images", "skipped", "batches_per_epoch", "epochs", "max_train_steps", "warnings",
                        "header_checked", "validation"}
    assert doc["buckets"] == [{"resolution": [640, 384], "count": 3}]
    assert doc["images"] == [{"path": str(tmp_path / "3_c" / "a.png"), "size": [640, 384],
                              "bucket": [640, 384], "resized": [640, 384], "repeats": 3}]
    assert doc["skipped"][0]["path"] == str(tmp_path / "3_c" / "bad.png")
    assert (doc["batches_per_epoch"], doc["epochs"], doc["max_train_steps"]) == (2, 2, 4)
    assert doc["header_checked"] == 1 and doc["validation"] == []


def test_the_demo_dataset_plans_differently_at_512_and_1024():
    from core.config.presets import find_preset, load_preset
    config = load_preset(find_preset("demo")).config
    config.dataset.resolution = (512, 512)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 256, 2048
    low = plan_dataset(config.dataset, config.training)
    config.dataset.resolution = (1024, 1024)
    high = plan_dataset(config.dataset, config.training)
    assert low.buckets != high.buckets
    assert len(low.images) == len(high.images) == 24
    assert sum(low.buckets.values()) == sum(high.buckets.values()) == 80
    assert low.mean_ar_error != high.mean_ar_error


def test_colour_conversions_are_listed_in_the_plan(tmp_path):
    _image(tmp_path / "1_c" / "rgb.png", (512, 512))
    Image.new("RGBA", (512, 512), (0, 0, 0, 0)).save(tmp_path / "1_c" / "alpha.png")
    Image.new("CMYK", (512, 512)).save(tmp_path / "1_c" / "print.jpg")
    plan = plan_dataset(_kohya(tmp_path), _training(epochs=1))
    text = "\n".join(plan.notes)
    assert "transparency flattened onto white): alpha.png" in text
    assert "CMYK converted to RGB): print.jpg" in text
    assert "rgb.png" not in text


def test_the_plan_says_its_images_were_checked_by_their_headers_only(tmp_path):
    _image(tmp_path / "2_c" / "good.png", (512, 512))
    garbage_png(tmp_path / "2_c" / "garbage.png", (512, 512))
    plan = plan_dataset(_kohya(tmp_path), _training(epochs=1))
    # Damage past a sound header and ending cannot be seen without decoding: it is planned...
    assert sorted(i.record.path.name for i in plan.images) == ["garbage.png", "good.png"]
    # ...and the plan says plainly what was and was not checked.
    assert ("2 images were checked by their headers only; a damaged image is found when it is first "
            "decoded (caching latents or training)") in plan.notes
    assert plan_to_json(plan)["header_checked"] == 2


def test_planning_does_not_load_torch():
    import subprocess, sys
    script = "import sys, core.data.plan, core.cli.plan; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root)
    assert result.stdout.strip() == "False", result.stderr
