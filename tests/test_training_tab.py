"""The Training tab driving real runs of the tiny demo model (offscreen, a few seconds each)."""



from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QObject, Qt, QThread, Slot  # noqa: E402

from core.training.events import Failed, Finished, StepMetrics  # noqa: E402
from gui.training_tab import progress_text  # noqa: E402
from tests.engine_fixtures import tiny_config  # noqa: E402
from tests.gui_fixtures import quiet_training_tab  # noqa: E402

RUN_TIMEOUT_MS = 60_000


@pytest.fixture
def tab(qtbot):
    yield from quiet_training_tab(qtbot, RUN_TIMEOUT_MS)


def run_to_end(qtbot, tab, config=None):
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        assert tab.start(config)
    return finished.args[0]


def wait_for_steps(qtbot, tab, steps):
    qtbot.waitUntil(lambda: len(tab.plots.loss.series("raw")) >= steps, timeout=RUN_TIMEOUT_MS)


class ThreadRecorder(QObject):
    def __init__(self):
        super().__init__()
        self.threads = set()

    @Slot(object)
    def on_event(self, event):
        self.threads.add(QThread.currentThread())


def curve_length(plot, name):
    x, _ = plot._series[name][1].getData()
    return 0 if x is None else len(x)


def test_a_run_started_from_the_tab_trains_plots_and_saves(qtbot, tab, tmp_path):
    tab.project.config = tiny_config(tmp_path, steps=6)
    recorder = ThreadRecorder()
    tab._worker.event.connect(recorder.on_event)
    result = run_to_end(qtbot, tab)
    assert recorder.threads == {QThread.currentThread()}  # events arrive in the GUI thread, as signals
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    assert Path(result.lora_path).is_file() and not tab.is_running() and tab.state == "idle"
    plots = tab.plots
    assert len(plots.loss.series("raw")) == len(plots.loss.series("smoothed")) == 6
    assert curve_length(plots.loss, "raw") == 6  # the last points were drawn, not only stored
    assert plots.lr.series_names() == ["unet", "text_encoder"] and len(plots.lr.series("unet")) == 6
    assert len(plots.epoch_loss.series("mean loss")) >= 1
    assert plots.memory.y_label == "RSS (MB)" and plots.memory.series_names() == ["RSS", "training peak", "run peak"]
    assert not plots.dlr.active and plots.dlr.note.text() == "DLR appears with Prodigy and D-Adaptation"
    assert tab.progress.value() == tab.progress.maximum() == 6
    assert tab.progress.format().startswith("step 6/6 · epoch ")
    log = tab.log.toPlainText()
    assert "run folder" in log and "saved final checkpoint at step 6" in log and "completed after 6 steps" in log
    assert tab.start_button.isEnabled() and not tab.stop_button.isEnabled() and tab.errors == []


def test_start_trains_a_snapshot_so_later_edits_do_not_reach_the_run(qtbot, tab, tmp_path):
    tab.project.config = tiny_config(tmp_path, steps=4)
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        tab.start()
        tab.project.config.training.max_train_steps = 2
        tab.project.config.output.output_name = "edited"
    assert finished.args[0].steps == 4 and Path(finished.args[0].lora_path).name == "tiny.safetensors"


def test_buttons_follow_the_phase(qtbot, tab, tmp_path):
    assert tab.start_button.isEnabled()
    assert not any(b.isEnabled() for b in (tab.pause_button, tab.stop_button, tab.cancel_button,
                                           tab.save_button, tab.sample_button))
    with qtbot.waitSignal(tab.running_changed) as changed:
        tab.start(tiny_config(tmp_path, steps=400))
    assert changed.args == [True]
    assert not tab.start_button.isEnabled() and tab.stop_button.isEnabled() and tab.cancel_button.isEnabled()
    assert tab.save_button.isEnabled() and not tab.sample_button.isEnabled()  # no sample prompts in this run
    assert not tab.start(tiny_config(tmp_path / "again"))  # one run at a time
    tab.pause_button.click()
    assert tab.pause_button.text() == "Resume" and tab.save_button.isEnabled() and tab.stop_button.isEnabled()
    tab.pause_button.click()
    assert tab.pause_button.text() == "Pause" and tab.save_button.isEnabled()
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS):
        tab.stop_button.click()
        assert not any(b.isEnabled() for b in (tab.start_button, tab.pause_button, tab.stop_button,
                                               tab.cancel_button, tab.save_button))
    assert tab.start_button.isEnabled() and not tab.pause_button.isEnabled()


def test_start_is_blocked_while_the_configuration_has_errors(tab, tmp_path):
    tab.set_start_blocked(["network.dim: below the minimum 1", "dataset: no image folders"])
    assert not tab.start_button.isEnabled() and not tab.start(tiny_config(tmp_path))
    assert "network.dim: below the minimum 1" in tab.start_button.toolTip()
    assert "dataset: no image folders" in tab.start_button.toolTip()
    assert tab.blocked_label.text() == "Cannot start: network.dim: below the minimum 1 (and 1 more)"
    tab.set_start_blocked([])
    assert tab.start_button.isEnabled() and tab.blocked_label.isHidden()


def test_pause_holds_training_until_resumed(qtbot, tab, tmp_path):
    tab.start(tiny_config(tmp_path, steps=40))
    wait_for_steps(qtbot, tab, 2)
    tab.pause()
    qtbot.waitUntil(lambda: tab.status_label.text() == "Paused", timeout=RUN_TIMEOUT_MS)
    held = len(tab.plots.loss.series("raw"))
    qtbot.wait(800)
    assert len(tab.plots.loss.series("raw")) == held < 40 and tab.is_running()
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        tab.resume()
    assert finished.args[0].reason == "completed" and len(tab.plots.loss.series("raw")) == 40


def test_stop_ends_early_and_saves_the_lora(qtbot, tab, tmp_path):
    tab.start(tiny_config(tmp_path, steps=400))
    wait_for_steps(qtbot, tab, 2)
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        tab.stop()
    result = finished.args[0]
    assert isinstance(result, Finished) and result.reason == "stopped" and result.steps < 400
    assert Path(result.lora_path).is_file()
    assert tab.status_label.text() == f"Stopped after {result.steps} steps"


def test_cancel_asks_first_and_then_ends_without_a_lora(qtbot, tab, tmp_path):
    tab.start(tiny_config(tmp_path, steps=400))
    wait_for_steps(qtbot, tab, 1)
    tab.confirm_cancel = lambda: False
    tab.cancel_button.click()
    assert tab.is_running() and tab.state == "running"
    tab.confirm_cancel = lambda: True
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        tab.cancel_button.click()
    result = finished.args[0]
    assert isinstance(result, Finished) and result.reason == "cancelled" and result.lora_path is None
    assert not list(Path(result.run_dir).rglob("*.safetensors"))


def test_a_failing_run_reaches_the_error_hook_with_its_traceback(qtbot, tab, tmp_path, monkeypatch):
    from core.training.step import StepComputer

    def broken(self, batch):
        raise RuntimeError("boom")

    monkeypatch.setattr(StepComputer, "loss", broken)
    result = run_to_end(qtbot, tab, tiny_config(tmp_path, steps=6))
    assert isinstance(result, Failed) and tab.errors == [result]
    assert "RuntimeError: boom" in result.traceback and "broken" in result.traceback
    assert result.log_path and Path(result.log_path).is_file()
    assert "FAILED" in tab.log.toPlainText() and tab.status_label.text().startswith("Failed")
    assert tab.start_button.isEnabled()


def test_two_runs_one_after_the_other_both_complete(qtbot, tab, tmp_path):
    first = run_to_end(qtbot, tab, tiny_config(tmp_path / "one", steps=4))
    second = run_to_end(qtbot, tab, tiny_config(tmp_path / "two", steps=5))
    assert (first.reason, second.reason) == ("completed", "completed")
    assert first.run_dir != second.run_dir and Path(second.lora_path).is_file()
    assert len(tab.plots.loss.series("raw")) == 5  # the second run starts with clean plots
    assert tab.progress.format().startswith("step 5/5")


def test_closing_mid_run_stops_and_waits_for_the_save(qtbot, tab, tmp_path):
    ended = []
    tab.run_finished.connect(ended.append)
    tab.start(tiny_config(tmp_path, steps=400))
    wait_for_steps(qtbot, tab, 1)
    assert tab.request_stop_and_wait(RUN_TIMEOUT_MS)
    assert not tab.is_running() and ended and ended[0].reason == "stopped"
    assert Path(ended[0].lora_path).is_file()


def test_events_are_drawn_by_the_timer_not_one_by_one(qtbot, tab):
    for step in range(1, 1001):
        tab._on_worker_event(StepMetrics(step, 1, 1000, 1.0 / step, 0.5, {"unet": 1e-4}))
    assert len(tab.plots.loss.series("raw")) == 1000 and curve_length(tab.plots.loss, "raw") == 0
    qtbot.waitUntil(lambda: tab.plots.redraws == 1, timeout=2000)  # one cycle over the plots
    assert curve_length(tab.plots.loss, "raw") == 1000
    assert tab.progress.format() == "step 1000/1000 · epoch 1 · -- it/s · ETA --:--"


def test_progress_text_reads_like_a_sentence():
    metrics = StepMetrics(120, 2, 1600, 0.1, 0.1, {}, it_per_s=1.853, eta_s=754)
    assert progress_text(metrics, 10) == "step 120/1600 · epoch 2/10 · 1.85 it/s · ETA 12:34"
    assert progress_text(metrics, 10, skipped=3) == "step 120/1600 · epoch 2/10 · 3 skipped · 1.85 it/s · ETA 12:34"


def test_save_now_and_sample_now_act_after_the_next_step(qtbot, tab, tmp_path):
    config = tiny_config(tmp_path, steps=400)
    config.sampling.prompts = "kiln, blue background --w 64 --h 64 --s 2"
    tab.start(config)
    wait_for_steps(qtbot, tab, 1)
    assert tab.sample_button.isEnabled()
    tab.save_button.click()
    tab.sample_button.click()
    qtbot.waitUntil(lambda: tab.samples.count() == 1 and "saved manual checkpoint" in tab.log.toPlainText(),
                    timeout=RUN_TIMEOUT_MS)
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS):
        tab.stop()
    sample = tab.samples.item(0).data(Qt.ItemDataRole.UserRole)
    assert Path(sample.path).is_file() and sample.prompt == "kiln, blue background"
    viewer = tab.samples.show_sample(tab.samples.item(0))
    assert "kiln, blue background" in viewer.caption.text() and viewer.image.pixmap().width() >= 384


def test_a_queued_run_starts_even_while_the_projects_settings_are_blocked(qtbot, tab, tmp_path):
    # The queue checked its own snapshot; the open project's problems are not the queued run's.
    tab.set_start_blocked(["network.dim: below the minimum 1"])
    with qtbot.waitSignal(tab.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
        assert tab.start_queued(tiny_config(tmp_path, steps=2), "", "queued")
        assert not tab.start_queued(tiny_config(tmp_path / "again"), "", "second")  # one run at a time
    assert finished.args[0].reason == "completed" and "queue: starting “queued”" in tab.log.toPlainText()


def test_the_run_folder_is_announced_when_the_engine_makes_it(qtbot, tab, tmp_path):
    started = []
    tab.run_started.connect(started.append)
    result = run_to_end(qtbot, tab, tiny_config(tmp_path, steps=2))
    assert started == [result.run_dir]


def test_skipped_steps_show_in_the_progress_and_the_log(qtbot, tab, tmp_path, monkeypatch):
    from core.config.schema import NonFinitePolicy
    from tests.test_faults_nan import poison_losses

    poison_losses(monkeypatch, {2}, float("nan"))
    tab.project.config = tiny_config(tmp_path, steps=4)
    tab.project.config.training.nonfinite_loss = NonFinitePolicy.SKIP
    result = run_to_end(qtbot, tab)
    assert isinstance(result, Finished) and result.skipped_steps == 1, getattr(result, "traceback", result)
    assert tab.progress.format().startswith("step 4/4 · epoch ") and " · 1 skipped · " in tab.progress.format()
    assert "step 2: the loss was nan; step skipped" in tab.log.toPlainText()
