"""A runaway caption (a 1 MB file of 120,000 "tags") is named in the plan, and it does not
bloat the LoRA file's metadata: ss_tag_frequency keeps the most used tags of each folder."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from core.models.sd1 import FAMILY as SD1
from core.config.schema import DatasetParams, Duration, SubsetParams, TrainConfig
from core.data.scan import scan_dataset
from core.kohya.metadata import MAX_TAG_CHARS, MAX_TAGS_PER_FOLDER, build_metadata, limit_tag_frequency
from core.data.plan import plan_dataset
from core.data.plan_report import LONG_CAPTION_CHARS

RUNAWAY_TAGS = 120_000


def _dataset(tmp_path: Path) -> TrainConfig:
    folder = tmp_path / "3_cat"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (512, 512), (120, 90, 60)).save(folder / f"{name}.png")
    (folder / "a.txt").write_text("cat, red", "utf-8")
    (folder / "b.txt").write_text("cat, " + "x" * (LONG_CAPTION_CHARS - 5), "utf-8")  # exactly at the limit
    runaway = ", ".join(f"tag{i:x}" for i in range(RUNAWAY_TAGS))  # 1 MB on one line
    assert len(runaway) > 1_000_000
    (folder / "c.txt").write_text("cat, " + runaway, "utf-8")
    config = TrainConfig()
    config.dataset = DatasetParams(subsets=[SubsetParams(image_dir=str(tmp_path), kohya_layout=True)])
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 1
    return config


def _metadata(config: TrainConfig, **overrides) -> dict[str, str]:
    plan = plan_dataset(config.dataset, config.training)
    return build_metadata(config, plan, family=SD1, epoch=1, step=3, session_id="1", training_started_at=0.0,
                          training_finished_at=1.0, model_name="model.safetensors", title="t", **overrides)


def test_a_caption_over_the_limit_is_named_in_the_plan_with_what_it_costs(tmp_path):
    config = _dataset(tmp_path)
    plan = plan_dataset(config.dataset, config.training)
    warning = next(w for w in plan.warnings if "longer than" in w)
    length = len((tmp_path / "3_cat" / "c.txt").read_text("utf-8"))
    assert warning.startswith(f"1 caption is longer than {LONG_CAPTION_CHARS:,} characters: "
                              f"c.txt ({length:,} characters).")
    assert "first 75 tokens" in warning and "slows the steps" in warning
    assert "b.txt" not in warning  # at the limit is not over it


def test_the_runaway_caption_leaves_the_tag_frequency_small(tmp_path):
    config = _dataset(tmp_path)
    meta = _metadata(config)
    tags = json.loads(meta["ss_tag_frequency"])["3_cat"]
    assert len(tags) == MAX_TAGS_PER_FOLDER
    assert tags["cat"] == 3 and tags["red"] == 1  # the most used tags are kept
    assert len(meta["ss_tag_frequency"]) < 20_000  # not the ~1 MB of every tag
    assert sum(len(value) for value in meta.values()) < 64 * 1024


def test_the_scans_exact_counts_are_limited_the_same_way(tmp_path):
    config = _dataset(tmp_path)
    scan = scan_dataset(config.dataset)
    assert len(scan.tag_frequency["3_cat"]) > RUNAWAY_TAGS  # the scan counts everything
    meta = _metadata(config, tag_frequency_override=scan.tag_frequency)
    assert len(json.loads(meta["ss_tag_frequency"])["3_cat"]) == MAX_TAGS_PER_FOLDER


def test_tags_within_the_limits_are_kept_exactly_in_sd_scripts_order():
    frequency = {"3_cat": {"cat": 3, "red": 1, "blue": 2}, "1_dog": {"dog": 1}}
    limited = limit_tag_frequency(frequency)
    assert limited == frequency
    assert json.dumps(limited) == json.dumps(frequency)


def test_the_most_used_tags_are_kept_first_seen_first_on_ties_and_overlong_tags_left_out():
    counts = {f"rare{i}": 1 for i in range(MAX_TAGS_PER_FOLDER + 5)}
    counts = {"long " * MAX_TAG_CHARS: 50, **counts, "common": 7, "z" * MAX_TAG_CHARS: 2}
    limited = limit_tag_frequency({"1_x": counts})["1_x"]
    assert len(limited) == MAX_TAGS_PER_FOLDER
    assert "long " * MAX_TAG_CHARS not in limited  # longer than a tag can be
    assert limited["common"] == 7 and limited["z" * MAX_TAG_CHARS] == 2  # at the length limit is kept
    assert "rare0" in limited and f"rare{MAX_TAGS_PER_FOLDER + 4}" not in limited
    assert list(limited)[:2] == ["rare0", "rare1"]  # kept tags keep their order
