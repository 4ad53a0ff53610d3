"""The Parameters tab: a form generated from the schema, bound to the project (offscreen)."""

import math

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QLineEdit, QListWidget, QPlainTextEdit, QScrollArea,
                               QWidget)

from core.config.schema import DEMO_MODEL, GROUPS
from core.config.params import param_specs
from core.config.presets import find_preset, load_preset
from gui import theme
from gui.form_values import format_float, format_pairs, parse_pairs
from gui.parameters_tab import ParametersTab
from gui.project import Project


@pytest.fixture
def project():
    project = Project()
    project.load(load_preset(find_preset("demo")), builtin=True)
    return project


@pytest.fixture
def tab(qtbot, project):
    tab = ParametersTab(project)
    qtbot.addWidget(tab)
    tab.resize(1100, 800)
    tab.show()
    return tab


def _line(tab, path) -> QLineEdit:
    return tab.findChild(QWidget, path).findChild(QLineEdit)


def _type_into(qtbot, edit: QLineEdit, text: str) -> None:
    edit.selectAll()
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def test_every_schema_field_but_the_subsets_has_exactly_one_widget(tab):
    paths = [f"{g}.{s.name}" for g, cls in GROUPS.items() for s in param_specs(cls)]
    for path in paths:
        found = tab.findChildren(QWidget, path)
        assert len(found) == (0 if path == "dataset.subsets" else 1), path


def test_the_demo_preset_shows_its_values(tab):
    assert tab.findChild(QWidget, "optimizer.type").findChild(QComboBox).currentText() == "AdamW"
    assert _line(tab, "optimizer.learning_rate").text() == "0.001"
    assert tab.editor("dataset.resolution").value() == (256, 256)
    assert tab.editor("network.dim").box.value() == 4
    assert tab.editor("model.base_model").edit.text() == DEMO_MODEL
    assert "kilnstyle, vase" in tab.editor("sampling.prompts").findChild(QPlainTextEdit).toPlainText()
    assert _line(tab, "optimizer.unet_lr").text() == ""
    assert _line(tab, "optimizer.unet_lr").placeholderText() == "same as learning rate"


@pytest.mark.parametrize(("path", "placeholder"), [
    ("network.down_lr_weight", "empty: 1 for every block"),
    ("network.mid_lr_weight", "empty: 1"),
    ("network.up_lr_weight", "empty: 1 for every block"),
    ("network.block_dims", "empty: the network dim for every block"),
    ("network.block_alphas", "empty: the network alpha for every block"),
    ("network.conv_block_dims", "empty: the conv dim for every block"),
    ("network.conv_block_alphas", "empty: the conv alpha for every block"),
])
def test_empty_block_fields_say_what_empty_means(tab, path, placeholder):
    edit = _line(tab, path)
    assert edit.text() == ""
    assert edit.placeholderText() == placeholder


def test_tooltips_carry_help_range_unit_and_path(tab):
    tip = tab.editor("dataset.resolution").toolTip()
    assert "Training resolution" in tip and "64 to 8192 px" in tip and "dataset.resolution" in tip


def test_typing_a_learning_rate_in_scientific_notation_sets_it(qtbot, tab, project):
    _type_into(qtbot, _line(tab, "optimizer.learning_rate"), "5e-5")
    assert project.config.optimizer.learning_rate == 0.00005 and project.dirty


def test_small_floats_show_exactly():
    assert format_float(1e-4) == "0.0001" and format_float(0.00005) == "5e-5"
    assert format_float(math.inf) == "inf" and format_float(1e-8) == "1e-8"


def test_a_value_that_is_not_a_number_marks_the_field_and_changes_nothing(qtbot, tab, project):
    _type_into(qtbot, _line(tab, "optimizer.learning_rate"), "abc")
    editor = tab.editor("optimizer.learning_rate")
    assert project.config.optimizer.learning_rate == 0.001 and not project.dirty
    assert "not a number" in editor.toolTip() and "not a number" in editor.message.text()
    assert theme.ERROR == editor.frame.color
    assert any(p.path == "optimizer.learning_rate" for p in tab.problems())
    _type_into(qtbot, _line(tab, "optimizer.learning_rate"), "0.002")
    assert project.config.optimizer.learning_rate == 0.002 and not editor.message.isVisible()


def test_a_spin_box_edit_sets_the_field(tab, project):
    box = tab.editor("network.dim").box
    box.setValue(16)
    box.editingFinished.emit()
    assert project.config.network.dim == 16


def test_a_choice_sets_the_enum(tab, project):
    tab.editor("optimizer.type").combo.setCurrentText("Prodigy")
    assert project.config.optimizer.type.value == "Prodigy"


def test_resolution_is_edited_as_width_by_height(tab, project):
    tab.editor("dataset.resolution").parts[1].setValue(320)
    assert project.config.dataset.resolution == (256, 320)


def test_growth_rate_accepts_inf_and_a_number(qtbot, tab, project):
    tab.advanced.setChecked(True)
    edit = _line(tab, "optimizer.growth_rate")
    _type_into(qtbot, edit, "1.02")
    assert project.config.optimizer.growth_rate == 1.02
    _type_into(qtbot, edit, "inf")
    assert project.config.optimizer.growth_rate == math.inf


def test_an_empty_unet_lr_means_none(qtbot, tab, project):
    edit = _line(tab, "optimizer.unet_lr")
    _type_into(qtbot, edit, "0.0002")
    assert project.config.optimizer.unet_lr == 0.0002
    edit.clear()
    qtbot.keyClick(edit, Qt.Key.Key_Return)
    assert project.config.optimizer.unet_lr is None


def test_extra_optimizer_arguments_read_as_name_value_pairs(qtbot, tab, project):
    tab.advanced.setChecked(True)
    _type_into(qtbot, _line(tab, "optimizer.extra_args"), 'd_coef=2 decouple=true name="a b"')
    assert project.config.optimizer.extra_args == {"d_coef": 2, "decouple": True, "name": "a b"}
    assert parse_pairs(format_pairs({"x": "a b", "y": 0.5, "z": "true"}), "p") == {"x": "a b", "y": 0.5, "z": "true"}


def test_the_base_model_can_be_browsed_or_the_demo_model_picked(tab, project, monkeypatch, tmp_path):
    model = tmp_path / "m.safetensors"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(model), ""))
    editor = tab.editor("model.base_model")
    file_action = next(a for a in editor.button.menu().actions() if a.text() == "File…")
    file_action.trigger()
    assert project.config.model.base_model == str(model)
    demo_action = next(a for a in editor.button.menu().actions() if a.text() == "Built-in demo model")
    demo_action.trigger()
    assert project.config.model.base_model == DEMO_MODEL


def test_prompts_are_committed_as_typed(qtbot, tab, project):
    box = tab.editor("sampling.prompts").edit
    box.setPlainText("a cat")
    assert project.config.sampling.prompts == "a cat"


def test_the_advanced_toggle_hides_and_shows_advanced_fields(tab):
    advanced, basic = tab.editor("optimizer.eps"), tab.editor("optimizer.learning_rate")
    assert not advanced.isVisible() and basic.isVisible()
    tab.advanced.setChecked(True)
    assert advanced.isVisible()
    tab.advanced.setChecked(False)
    assert not advanced.isVisible()


def test_duration_decides_which_of_epochs_and_steps_is_used(tab, project):
    epochs, steps = tab.editor("training.max_train_epochs"), tab.editor("training.max_train_steps")
    assert project.config.training.duration.value == "epochs"
    assert epochs.isEnabled() and not steps.isEnabled() and "Not used" in steps.toolTip()
    tab.editor("training.duration").combo.setCurrentText("steps")
    assert steps.isEnabled() and not epochs.isEnabled()


def test_a_contradiction_marks_the_field_and_reports_invalid(qtbot, tab, project):
    assert tab.problems() == []
    tab.advanced.setChecked(True)
    with qtbot.waitSignal(tab.validity_changed, timeout=2000) as signal:
        _type_into(qtbot, _line(tab, "schedule.warmup_ratio"), "0.1")
    has_errors, messages = signal.args
    assert has_errors and any("warmup" in m for m in messages)
    editor = tab.editor("schedule.warmup_steps")
    assert "not both" in editor.toolTip() and "not both" in editor.message.text()
    assert theme.ERROR == editor.frame.color


def test_warnings_are_marked_in_their_own_colour_and_do_not_block(qtbot, tab, project):
    project.set_value("network.alpha", 8.0)
    problems = tab.validate_now()
    assert [p.severity for p in problems] == ["warning"]
    assert theme.WARNING == tab.editor("network.alpha").frame.color
    assert tab.error_messages() == []


def test_problems_of_fields_on_other_tabs_are_listed_and_forwarded(qtbot, tab, project):
    project.config.dataset.subsets[0].image_dir = "/does/not/exist"
    tab.validate_now()
    summary = tab.findChild(QWidget, "problemSummary")
    assert summary.count() == 1 and "Image folder 1" in summary.item(0).text()
    with qtbot.waitSignal(tab.problem_activated) as signal:
        summary.itemClicked.emit(summary.item(0))
    assert signal.args == ["dataset.subsets[0].image_dir"]


def test_clicking_a_problem_reveals_its_hidden_advanced_field(qtbot, tab, project):
    project.set_value("schedule.warmup_ratio", 0.1)
    project.set_value("optimizer.growth_rate", 2.0)  # a warning on an advanced field
    tab.validate_now()
    summary = tab.findChild(QWidget, "problemSummary")
    item = next(summary.item(i) for i in range(summary.count()) if "Growth rate" in summary.item(i).text())
    summary.itemClicked.emit(item)
    assert tab.advanced.isChecked() and tab.editor("optimizer.growth_rate").isVisible()


def test_revealing_a_field_scrolls_to_it_and_focuses_it(qtbot, tab):
    qtbot.waitExposed(tab)
    tab.activateWindow()
    bar = tab.findChild(QScrollArea).verticalScrollBar()
    assert bar.value() == 0 and tab.reveal("sampling.every_n_steps")
    qtbot.waitUntil(lambda: tab.editor("sampling.every_n_steps").box.hasFocus(), timeout=1000)
    assert bar.value() > 0


def test_the_group_list_scrolls_to_its_group(tab):
    groups = tab.findChild(QListWidget, "groupList")
    groups.setCurrentRow(groups.count() - 1)
    assert tab.findChild(QScrollArea).verticalScrollBar().value() > 0


def test_the_mouse_wheel_scrolls_the_page_not_the_number_under_it(qtbot, tab):
    qtbot.waitExposed(tab)
    box, bar = tab.editor("network.dim").box, tab.findChild(QScrollArea).verticalScrollBar()
    wheel = QWheelEvent(QPointF(5, 5), QPointF(box.mapToGlobal(QPoint(5, 5))), QPoint(0, 0), QPoint(0, -120),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(box, wheel)
    assert box.value() == 4 and bar.value() > 0


def test_a_change_made_elsewhere_is_shown(tab, project):
    project.apply("network.dim=32")
    assert tab.editor("network.dim").box.value() == 32


def test_loading_a_preset_shows_it_without_marking_the_project_dirty(qtbot, tab, project):
    project.load(load_preset(find_preset("sd15-prodigy")), builtin=True)
    qtbot.wait(250)  # past the validation delay
    assert not project.dirty
    assert tab.editor("optimizer.type").combo.currentText() == "Prodigy"
    assert tab.editor("optimizer.learning_rate").value() == project.config.optimizer.learning_rate


def test_loading_a_preset_clears_a_refused_edit(qtbot, tab, project):
    _type_into(qtbot, _line(tab, "optimizer.learning_rate"), "abc")
    project.load(load_preset(find_preset("demo")), builtin=True)
    assert _line(tab, "optimizer.learning_rate").text() == "0.001"
    assert not tab.validate_now()


def test_the_tab_does_not_import_torch():
    import subprocess
    import sys
    script = ("import os; os.environ['QT_QPA_PLATFORM']='offscreen'\nimport sys\n"
              "from gui.app import make_app\nfrom gui.parameters_tab import ParametersTab\n"
              "from gui.project import Project\napp = make_app(); ParametersTab(Project())\n"
              "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_the_token_length_arrows_step_through_75_150_225(tab):
    box = tab.editor("training.max_token_length").box
    assert box.value() == 75
    box.stepUp()
    assert box.value() == 150
    box.stepUp()
    box.stepUp()
    assert box.value() == 225


def test_fields_of_another_model_family_show_only_for_that_family(tab, project):
    from core.models.sdxl import DEMO_SDXL_MODEL

    tab.advanced.setChecked(True)
    sdxl_only = [tab.editor(path) for path in ("network.train_text_encoder_2", "optimizer.text_encoder_2_lr")]
    assert tab.model_family() == "sd1" and not any(editor.isVisible() for editor in sdxl_only)
    editor = tab.editor("model.base_model")
    next(a for a in editor.button.menu().actions() if a.text() == "Built-in SDXL demo model").trigger()
    assert project.config.model.base_model == DEMO_SDXL_MODEL
    tab.validate_now()  # family "auto" finds SDXL from the model
    assert tab.model_family() == "sdxl" and all(editor.isVisible() for editor in sdxl_only)
    assert tab.editor("model.clip_skip").isVisible()


def test_the_text_encoder_choices_are_used_only_while_text_encoders_train(tab, project):
    from core.models.sdxl import DEMO_SDXL_MODEL

    project.set_value("model.base_model", DEMO_SDXL_MODEL)
    tab.advanced.setChecked(True)
    tab.validate_now()
    dependents = [tab.editor(p) for p in ("network.train_text_encoder_2", "optimizer.text_encoder_2_lr",
                                          "optimizer.text_encoder_lr")]
    project.set_value("network.train_text_encoder", False)
    assert not any(editor.isEnabled() for editor in dependents)
    assert "Not used" in tab.editor("network.train_text_encoder_2").toolTip()
    project.set_value("network.train_text_encoder", True)
    assert all(editor.isEnabled() for editor in dependents)


def test_conv_dim_and_alpha_are_used_only_by_locon(tab, project):
    tab.advanced.setChecked(True)
    conv = [tab.editor("network.conv_dim"), tab.editor("network.conv_alpha")]
    project.set_value("network.type", "LoRA")
    assert not any(editor.isEnabled() for editor in conv)
    project.set_value("network.type", "LoCon")
    assert all(editor.isEnabled() for editor in conv)



def test_the_lycoris_types_are_offered_and_enable_their_own_options(tab, project):
    tab.advanced.setChecked(True)
    combo = tab.editor("network.type").combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["LoRA", "LoCon", "LoHa", "LoKr", "IA3"]
    lokr = [tab.editor(f"network.lokr_{name}") for name in ("factor", "full_matrix", "decompose_both")]
    conv, dora = tab.editor("network.conv_dim"), tab.editor("network.dora_wd")
    project.set_value("network.type", "LoKr")
    assert all(editor.isEnabled() for editor in lokr) and conv.isEnabled() and dora.isEnabled()
    project.set_value("network.type", "LoHa")
    assert not any(editor.isEnabled() for editor in lokr) and conv.isEnabled() and dora.isEnabled()
    assert not tab.editor("network.dropout").isEnabled()  # LyCORIS's LoHa has no dropout either
    project.set_value("network.type", "IA3")
    assert not dora.isEnabled() and not conv.isEnabled()
