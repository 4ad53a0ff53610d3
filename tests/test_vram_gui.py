"""The VRAM forecast in the GUI (offscreen): the panels of the Parameters and Training tabs, the
card, and the check before Start, which warns when the forecast exceeds the card and blocks
nothing the person insists on. A stand-in forecast (9.1 GB, 7.4 GB with gradient checkpointing)
keeps most tests fast and exact; one runs the real forecast of the tiny demo model."""

from __future__ import annotations

import threading

import pytest

from core.config.schema import MixedPrecision
from core.training.vram_advice import GIB, Card
from gui import theme
from gui.parameters_tab import ParametersTab
from gui.project import Project
from gui.settings import settings
from gui.vram_dialog import VramStartDialog
from gui.vram_forecaster import CARD_SETTING, VramForecaster
from tests.engine_fixtures import tiny_config
from tests.gui_fixtures import quiet_training_tab
from tests.test_vram_advice import fake_forecast

WAIT_MS = 60_000


@pytest.fixture(autouse=True)
def _no_remembered_card():
    settings().remove(CARD_SETTING)
    yield
    settings().remove(CARD_SETTING)


def stand_in(calls=None, gate=None):
    """9.1 GB, 1.7 GB less with gradient checkpointing and 1.5 GB less at batch size 1; ``gate``
    (an Event) holds the first call."""
    def forecast(config, sizes, subsets):
        if calls is not None:
            calls.append(config)
        if gate is not None and len(calls or [None]) == 1:
            assert gate.wait(WAIT_MS / 1000)
        training = config.training
        return fake_forecast(int((9.1 - 1.7 * training.gradient_checkpointing - 1.5 * (training.batch_size == 1)) * GIB))
    return forecast


def no_card():
    return None


def project_with(tmp_path) -> Project:
    project = Project()
    project.config = tiny_config(tmp_path)
    return project


@pytest.fixture
def tab(qtbot):
    yield from quiet_training_tab(qtbot, WAIT_MS)


def use_forecaster(tab, qtbot, tmp_path, **options):
    """The Training tab with a forecaster of its own options, shown, on the tiny config."""
    tab.project.config = tiny_config(tmp_path)
    tab.vram = tab.vram_panel.forecaster = VramForecaster(tab.project, tab, detect=options.pop("detect", no_card),
                                                          **options)
    tab.vram.updated.connect(tab.vram_panel._on_forecaster_updated)
    tab.show()
    qtbot.waitUntil(lambda: tab.vram_panel.isVisible())
    tab.vram.watch(True)
    return tab.vram


def started_runs(tab, monkeypatch):
    runs = []
    monkeypatch.setattr(tab, "start", lambda config=None, resume_from=None: runs.append(config) or True)
    return runs


def forecast_done(qtbot, forecaster, complete=True):
    qtbot.waitUntil(lambda: forecaster.state_for(forecaster.inputs().key) is not None
                    and (forecaster.state.complete or not complete), timeout=WAIT_MS)
    return forecaster.state


# ---------------------------------------------------------------------------- the panel
def test_the_panels_show_the_demo_models_forecast_and_the_card(qtbot, tmp_path):
    project = project_with(tmp_path)
    project.config.training.mixed_precision = MixedPrecision.FP16
    forecaster = VramForecaster(project, detect=no_card)
    params = ParametersTab(project, vram=forecaster)
    qtbot.addWidget(params)
    params.show()
    forecaster.refresh_now()
    state = forecast_done(qtbot, forecaster)
    assert state.fits and state.card == Card("8 GB GPU", 8 * GIB, False)
    panel = params.vram_panel
    assert panel.figure.text() == "≈ 0.4 GB of your 8 GB (VRAM forecast)"
    assert theme.OK in panel.figure.styleSheet()
    assert panel.card_box.currentText() == "8 GB" and panel.card_box.count() == 12
    panel.details_button.click()
    assert panel.details.isVisible() and panel.details.text().startswith("VRAM forecast (batch 2 at 64x64)")
    assert "training step" in panel.figure.toolTip()


def test_a_forecast_over_the_card_is_red_and_says_how_many_changes_fit(qtbot, tab, tmp_path):
    forecaster = use_forecaster(tab, qtbot, tmp_path, forecast=stand_in())
    forecaster.refresh_now()
    forecast_done(qtbot, forecaster)
    text = tab.vram_panel.figure.text()
    assert text.startswith("≈ 9.1 GB of your 8 GB (VRAM forecast): does not fit — ") and "would, see Details" in text
    assert theme.ERROR in tab.vram_panel.figure.styleSheet()
    assert "Turn on gradient checkpointing: the same result, about 30% slower (≈ 7.4 GB)" in tab.vram_panel.details.text()


def test_a_detected_card_is_named_and_compared_with(qtbot, tab, tmp_path):
    card = Card("NVIDIA GeForce RTX 3060", 12 * GIB, True)
    forecaster = use_forecaster(tab, qtbot, tmp_path, forecast=stand_in(), detect=lambda: card)
    forecaster.refresh_now()
    state = forecast_done(qtbot, forecaster)
    qtbot.waitUntil(lambda: forecaster.detected == card)
    assert forecaster.card() == card and forecaster.state.fits
    assert tab.vram_panel.card_box.itemText(0) == "NVIDIA GeForce RTX 3060 (12 GB)"
    assert tab.vram_panel.figure.text() == "≈ 9.1 GB of your 12 GB (VRAM forecast)", state


def test_the_chosen_card_size_is_used_and_remembered(qtbot, tab, tmp_path):
    forecaster = use_forecaster(tab, qtbot, tmp_path, forecast=stand_in())
    forecaster.refresh_now()
    forecast_done(qtbot, forecaster)
    box = tab.vram_panel.card_box
    box.activated.emit(box.findData(16))  # as a person choosing "16 GB"
    assert forecaster.card().total_bytes == 16 * GIB and forecaster.state.fits
    assert tab.vram_panel.figure.text() == "≈ 9.1 GB of your 16 GB (VRAM forecast)"
    assert VramForecaster(Project(), detect=no_card).card().total_bytes == 16 * GIB  # the next launch


def test_edits_are_forecast_once_they_pause_and_only_while_a_panel_shows(qtbot, tmp_path):
    calls = []
    project = project_with(tmp_path)
    forecaster = VramForecaster(project, forecast=stand_in(calls), detect=no_card)
    forecaster.set_card_choice(16)  # it fits: no advice, whose search would forecast more
    project.set_value("training.batch_size", 3)
    assert not forecaster.pending and calls == []  # nobody looks: nothing is computed
    forecaster.watch(True)
    project.set_value("training.batch_size", 4)
    project.set_value("training.batch_size", 1)
    assert forecaster.pending and calls == []  # waiting for the edits to pause
    qtbot.waitUntil(lambda: not forecaster.pending, timeout=WAIT_MS)
    assert [c.training.batch_size for c in calls] == [1]  # one forecast, of the last edit
    forecaster.watch(False)


def test_a_newer_config_wins_over_a_stale_result(qtbot, tmp_path):
    calls, gate = [], threading.Event()
    project = project_with(tmp_path)
    forecaster = VramForecaster(project, forecast=stand_in(calls, gate), detect=no_card)
    seen = []
    forecaster.updated.connect(lambda: seen.append(forecaster.state))
    first = forecaster.refresh_now()
    qtbot.waitUntil(lambda: len(calls) == 1)  # the first forecast is under way, held
    project.set_value("training.gradient_checkpointing", True)
    second = forecaster.refresh_now()
    gate.set()
    qtbot.waitUntil(lambda: forecaster.state is not None and forecaster.state.key == second.key, timeout=WAIT_MS)
    qtbot.wait(50)  # any queued answer about the first config has arrived by now, and was dropped
    assert first.key != second.key and forecaster.state.forecast.driver == int(7.4 * GIB)
    assert {s.forecast.driver for s in seen if s is not None} == {int(7.4 * GIB)}  # the first's 9.1 GB never shown


def test_a_failed_forecast_is_shown_and_does_not_block_start(qtbot, tab, tmp_path, monkeypatch):
    def broken(config, sizes, subsets):
        raise FileNotFoundError("model.base_model: /models/missing.safetensors does not exist")
    forecaster = use_forecaster(tab, qtbot, tmp_path, forecast=broken)
    runs = started_runs(tab, monkeypatch)
    forecaster.refresh_now()
    qtbot.waitUntil(lambda: forecaster.state is not None, timeout=WAIT_MS)
    assert tab.vram_panel.figure.text() == ("VRAM forecast unavailable: model.base_model: "
                                            "/models/missing.safetensors does not exist")
    tab.start_button.click()
    assert len(runs) == 1 and tab.vram_dialog is None
    assert "VRAM forecast unavailable (model.base_model: " in tab.log.toPlainText()


# ---------------------------------------------------------------------------- the check before Start
def open_warning(qtbot, tab) -> VramStartDialog:
    tab.start_button.click()
    dialog = tab.vram_dialog
    assert dialog is not None
    qtbot.waitUntil(lambda: dialog.apply_button.isVisible() and dialog.apply_button.isEnabled(), timeout=WAIT_MS)
    return dialog


def test_start_warns_when_the_forecast_exceeds_the_card_and_cancel_does_not_start(qtbot, tab, tmp_path, monkeypatch):
    use_forecaster(tab, qtbot, tmp_path, forecast=stand_in())
    runs = started_runs(tab, monkeypatch)
    dialog = open_warning(qtbot, tab)
    assert dialog.isVisible() and dialog.headline.text() == "≈ 9.1 GB of your 8 GB"
    assert dialog.message.text().startswith("These settings will probably run out of GPU memory. The cheapest")
    texts = [dialog.choices.item(i).text() for i in range(dialog.choices.count())]
    assert texts[0] == "Turn on gradient checkpointing: the same result, about 30% slower  —  ≈ 7.4 GB"
    dialog.cancel_button.click()
    assert runs == [] and tab.vram_dialog is None and not tab.project.config.training.gradient_checkpointing


def test_start_anyway_starts_the_run_as_it_is(qtbot, tab, tmp_path):
    use_forecaster(tab, qtbot, tmp_path, forecast=stand_in())
    dialog = open_warning(qtbot, tab)
    dialog.start_button.click()
    assert tab.is_running() and tab._worker.is_running() and not tab.run_config.training.gradient_checkpointing
    with qtbot.waitSignal(tab.run_finished, timeout=WAIT_MS):
        tab.cancel(confirm=False)  # the run itself is the Training tab's tests' business
    assert "VRAM: started anyway at ≈ 9.1 GB of your 8 GB" in tab.log.toPlainText()


def test_applying_a_change_edits_the_field_and_starts(qtbot, tab, tmp_path, monkeypatch):
    params = ParametersTab(tab.project, vram=use_forecaster(tab, qtbot, tmp_path, forecast=stand_in()))
    qtbot.addWidget(params)
    runs = started_runs(tab, monkeypatch)
    dialog = open_warning(qtbot, tab)
    dialog.apply_button.click()  # the first, cheapest change is chosen
    assert tab.project.config.training.gradient_checkpointing and tab.project.dirty
    assert params.editor("training.gradient_checkpointing").value() is True
    assert len(runs) == 1 and "VRAM: applied “Turn on gradient checkpointing" in tab.log.toPlainText()


def test_a_later_change_can_be_chosen_and_changes_only_its_fields(qtbot, tab, tmp_path, monkeypatch):
    use_forecaster(tab, qtbot, tmp_path, forecast=stand_in())
    runs = started_runs(tab, monkeypatch)
    dialog = open_warning(qtbot, tab)
    # the stand-in rewards checkpointing and batch size 1 only: the other changes do not fit
    assert [dialog.choices.item(i).text().rsplit("≈ ", 1)[1] for i in range(dialog.choices.count())] == [
        "7.4 GB", "7.6 GB"]
    dialog.choices.setCurrentRow(1)
    dialog.apply_button.click()
    training = tab.project.config.training
    assert (training.batch_size, training.gradient_accumulation_steps, training.gradient_checkpointing) == (1, 2, False)
    assert len(runs) == 1


def test_when_nothing_fits_the_warning_says_so_and_still_lets_the_run_start(qtbot, tab, tmp_path, monkeypatch):
    use_forecaster(tab, qtbot, tmp_path, forecast=stand_in()).set_card_choice(4)
    runs = started_runs(tab, monkeypatch)
    tab.start_button.click()
    dialog = tab.vram_dialog
    qtbot.waitUntil(lambda: "No change on the list fits" in dialog.message.text(), timeout=WAIT_MS)
    assert dialog.headline.text() == "≈ 9.1 GB of your 4 GB" and "still need ≈ 5.9 GB" in dialog.message.text()
    assert dialog.apply_button.isHidden() and dialog.choices.isHidden()
    dialog.start_button.click()
    assert len(runs) == 1 and "VRAM: started anyway at ≈ 9.1 GB of your 4 GB" in tab.log.toPlainText()


def test_start_can_go_on_without_waiting_for_the_forecast(qtbot, tab, tmp_path, monkeypatch):
    calls, gate = [], threading.Event()
    use_forecaster(tab, qtbot, tmp_path, forecast=stand_in(calls, gate))
    runs = started_runs(tab, monkeypatch)
    tab.start_button.click()
    dialog = tab.vram_dialog
    assert dialog.isVisible() and dialog.start_button.text() == "Start without the forecast"
    assert dialog.message.text().startswith("Working out how much GPU memory")
    dialog.start_button.click()
    gate.set()
    assert len(runs) == 1 and "VRAM forecast not ready: started without it" in tab.log.toPlainText()


def test_a_forecast_that_arrives_and_fits_starts_without_asking(qtbot, tab, tmp_path, monkeypatch):
    calls, gate = [], threading.Event()
    forecaster = use_forecaster(tab, qtbot, tmp_path, forecast=stand_in(calls, gate))
    forecaster.set_card_choice(12)
    runs = started_runs(tab, monkeypatch)
    tab.start_button.click()
    assert tab.vram_dialog is not None and runs == []
    gate.set()
    qtbot.waitUntil(lambda: len(runs) == 1, timeout=WAIT_MS)
    assert tab.vram_dialog is None


def test_the_window_forecasts_once_for_both_tabs_at_the_dataset_plans_buckets(qtbot):
    from gui.main_window import DISCARD, MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.ask_unsaved = lambda: DISCARD
    window.open_initial_preset()  # the demo project: its images are planned by the Dataset tab
    qtbot.waitUntil(lambda: window.dataset_tab.plan is not None, timeout=WAIT_MS)
    assert window.parameters_tab.vram_panel.forecaster is window.training_tab.vram is window.vram
    plan = window.dataset_tab.plan
    assert window.vram.inputs().sizes == tuple(sorted({tuple(i.record.size) for i in plan.images}))
    assert window.vram.inputs().subsets == tuple(s.params for s in plan.subsets)


def test_shutdown_all_waits_for_a_forecast_under_way_and_runs_no_more(qtbot, tmp_path):
    """What the test suite's teardown relies on (tests/conftest.py): a window left open by one
    test never forecasts during the next, which may spy on the U-Net."""
    from gui.vram_forecaster import shutdown_all

    calls, gate = [], threading.Event()
    project = project_with(tmp_path)
    forecaster = VramForecaster(project, forecast=stand_in(calls, gate), detect=no_card)
    forecaster.refresh_now()
    qtbot.waitUntil(lambda: len(calls) == 1)  # under way, held at the gate
    threading.Timer(0.2, gate.set).start()
    shutdown_all()
    assert not any(t.name == "lorakiln-vram" and t.is_alive() for t in threading.enumerate())
    project.set_value("training.batch_size", 1)
    forecaster.refresh_now()
    qtbot.wait(200)
    assert len(calls) == 1  # nothing forecast after the shutdown


def test_a_weightless_demo_model_leaves_the_global_random_generator_alone(monkeypatch):
    """The forecast builds the demo model on the meta device in a background thread; seeding
    or restoring the process-wide generator there would change a run training meanwhile."""
    import torch

    from core.models.sd1 import FAMILY as SD1
    from core.models.sdxl import FAMILY as SDXL

    touched = []
    monkeypatch.setattr(torch, "manual_seed", lambda seed: touched.append(seed))
    monkeypatch.setattr(torch, "set_rng_state", lambda state: touched.append("restored"))
    with torch.device("meta"):
        SD1.build_demo(0)
        SDXL.build_demo(0)
    assert touched == []
