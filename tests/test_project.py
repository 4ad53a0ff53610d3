"""The GUI's project model: one configuration, edited through checked setters."""

import pytest

from core.config.schema import SubsetParams
from core.config.params import FieldError
from core.config.presets import find_preset, load_preset
from gui.project import Project


def test_loading_a_preset_resets_dirty_and_announces_it(qtbot):
    project = Project()
    with qtbot.waitSignal(project.loaded):
        project.load(load_preset(find_preset("demo")), builtin=True)
    assert project.name == "demo" and not project.dirty and project.builtin


def test_set_value_checks_types_and_ranges_and_marks_dirty(qtbot):
    project = Project()
    with qtbot.waitSignal(project.changed) as signal:
        project.set_value("network.dim", 16)
    assert signal.args == ["network.dim"] and project.config.network.dim == 16 and project.dirty
    with pytest.raises(FieldError, match="below the minimum"):
        project.set_value("training.batch_size", 0)
    with pytest.raises(FieldError):
        project.set_value("training.batch_size", "two")


def test_subset_fields_are_addressed_by_index(qtbot):
    project = Project()
    project.replace_subsets([SubsetParams(image_dir="/x")])
    project.set_value("dataset.subsets[0].num_repeats", 5)
    assert project.value("dataset.subsets[0].num_repeats") == 5


def test_saving_clears_dirty_and_keeps_every_value(qtbot, tmp_path):
    project = Project()
    project.set_value("optimizer.learning_rate", 0.0005)
    project.save(tmp_path / "p.toml")
    assert not project.dirty and project.path == tmp_path / "p.toml"
    assert load_preset(tmp_path / "p.toml").config.optimizer.learning_rate == 0.0005


def test_a_snapshot_is_independent_of_later_edits():
    project = Project()
    snapshot = project.snapshot()
    project.set_value("network.dim", 64)
    assert snapshot.network.dim == 8


def test_a_model_of_another_family_moves_sizes_left_at_the_old_familys_defaults():
    from core.config.schema import DEMO_MODEL
    from core.models.sdxl import DEMO_SDXL_MODEL

    project = Project()
    project.set_value("dataset.max_bucket_reso", 1536)  # chosen: kept
    project.set_value("model.base_model", DEMO_SDXL_MODEL)
    data = project.config.dataset
    assert (tuple(data.resolution), data.min_bucket_reso, data.max_bucket_reso) == ((1024, 1024), 512, 1536)
    project.set_value("model.base_model", DEMO_MODEL)  # back to SD 1.x's sizes
    assert (tuple(data.resolution), data.min_bucket_reso) == ((512, 512), 256)
    project.set_value("dataset.resolution", (768, 768))
    project.set_value("model.base_model", DEMO_SDXL_MODEL)
    assert tuple(data.resolution) == (768, 768)
