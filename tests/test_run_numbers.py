"""The numbers a run shows mean what they say: time per step is a step's own time, an epoch
cut short is no epoch, the progress says the phase, a finished run has no ETA, slow steps
read as s/it, plots start clean and show a lone point, and "Ready" never contradicts
"Cannot start"."""

import json
import threading
from pathlib import Path

import pytest

from core.data.plan import plan_dataset
from core.training.engine import Trainer
from core.training import engine as engine_module
from core.training.control import Control
from core.training.events import (CallbackSink, EpochMetrics, Finished, ListSink, PhaseProgress, RunStarted,
                                  Status, StepMetrics)
from core.training.metrics import PhaseTimes, Throughput, format_rate
from gui.plots import LivePlot
from gui.training_plots import TrainingPlots
from gui.training_tab import progress_text
from tests.engine_fixtures import tiny_config
from tests.gui_fixtures import quiet_training_tab


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- time per step
def test_time_spent_between_steps_is_not_a_steps_time():
    clock = FakeClock()
    rate = Throughput(window=10, clock=clock)
    rate.mark()
    clock.now += 2.0  # one step
    rate.mark()
    with rate.excluded():
        clock.now += 100.0  # sampling or saving
    clock.now += 2.0  # the next step
    rate.mark()
    rate.pause()
    clock.now += 600.0  # paused
    rate.resume()
    clock.now += 2.0
    rate.mark()
    assert rate.steps_per_second == pytest.approx(0.5)


def test_the_engines_time_per_step_leaves_sampling_out(tmp_path, monkeypatch):
    clock = FakeClock()

    class SteppingClock(FakeClock):
        def __call__(self) -> float:
            clock.now += 0.01  # each look at the clock: time goes by while training
            return clock.now

    monkeypatch.setattr(engine_module, "Throughput", lambda: Throughput(clock=SteppingClock()))
    config = tiny_config(tmp_path, steps=4)
    config.sampling.prompts = "kiln --w 64 --h 64 --s 1"
    config.sampling.every_n_steps = 2
    from core.training import sampler as sampler_module

    real_sample = sampler_module.Sampler.sample

    def slow_sample(self, step, epoch):
        clock.now += 1000.0  # sampling takes a long while
        return real_sample(self, step, epoch)

    monkeypatch.setattr(sampler_module.Sampler, "sample", slow_sample)
    sink = ListSink()
    result = Trainer(config, CallbackSink(sink.emit)).run()
    assert isinstance(result, Finished), getattr(result, "traceback", "")
    rates = [e.it_per_s for e in sink.of(StepMetrics)]
    assert len(rates) == 4 and all(rate > 1 for rate in rates[1:]), rates  # with sampling counted: < 0.01


def test_phase_times_are_kept_apart_from_training():
    clock = FakeClock()
    times = PhaseTimes(clock)
    for phase, seconds in (("caching", 4), ("training", 60), ("sampling", 12), ("training", 30), ("paused", 30)):
        times.enter(phase)
        clock.now += seconds
    assert times.outside_training() == "caching 00:04 · sampling 00:12 · paused 00:30"
    times.enter("")
    clock.now += 100  # after the run: no phase grows
    assert times.outside_training() == "caching 00:04 · sampling 00:12 · paused 00:30"


# ---------------------------------------------------------------- rates and the progress line
@pytest.mark.parametrize(("rate", "text"), [(2.0, "2.00 it/s"), (1.0, "1.00 it/s"), (0.25, "4.00 s/it"),
                                            (0.0, "-- it/s")])
def test_slow_steps_read_as_seconds_per_step(rate, text):
    assert format_rate(rate) == text


def test_the_progress_line_names_the_phase_and_drops_the_eta_once_ended():
    metrics = StepMetrics(120, 2, 1600, 0.1, 0.1, {}, it_per_s=0.5, eta_s=754)
    assert progress_text(metrics, 10) == "step 120/1600 · epoch 2/10 · 2.00 s/it · ETA 12:34"
    assert progress_text(metrics, 10, phase="sampling").startswith("Sampling · step 120/1600")
    assert progress_text(metrics, 10, ended="stopped") == "step 120/1600 · epoch 2/10 · 2.00 s/it · stopped"


@pytest.fixture
def tab(qtbot):
    yield from quiet_training_tab(qtbot, 60_000)


def test_the_progress_leaves_caching_behind_when_training_begins(tab):
    tab._on_worker_event(RunStarted("run", "tiny", 10, 2, 5, 5))
    tab._on_worker_event(PhaseProgress("caching", 12, 12))
    assert tab.progress.format() == "caching latents 12/12"
    tab._on_worker_event(Status("training", "training"))
    assert "caching" not in tab.progress.format() and tab.progress.format().startswith("training")
    tab._on_worker_event(StepMetrics(1, 1, 10, 0.5, 0.5, {}, it_per_s=2.0, eta_s=4.5))
    tab._on_worker_event(Status("sampling 1/2…", "sampling"))
    tab._update_progress()
    assert tab.progress.format().startswith("Sampling · step 1/10")


@pytest.mark.parametrize("reason", ["stopped", "cancelled"])
def test_the_eta_is_cleared_once_a_run_ends(tab, reason):
    tab.state = "running"
    tab._on_worker_event(RunStarted("run", "tiny", 10, 2, 5, 5))
    tab._on_worker_event(StepMetrics(3, 1, 10, 0.5, 0.5, {}, it_per_s=2.0, eta_s=3.5))
    tab._update_progress()
    assert "ETA 00:04" in tab.progress.format()
    tab._on_worker_finished(Finished(reason, "run", None, 3, 1, 2.0))
    assert "ETA" not in tab.progress.format() and tab.progress.format().endswith(reason)


def test_ready_never_sits_beside_cannot_start(tab):
    assert tab.status_label.text() == "Ready"
    tab.set_start_blocked(["network.dim: must be at least 1"])
    assert tab.blocked_label.text().startswith("Cannot start") and tab.status_label.text() == "Not ready"
    tab.set_start_blocked([])
    assert tab.status_label.text() == "Ready"


def test_the_windows_status_bar_says_why_it_cannot_start(qtbot):
    from gui.main_window import DISCARD, MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.ask_unsaved = lambda: DISCARD
    window.training_tab.set_start_blocked(["network.dim: must be at least 1"])
    window._on_training_running_changed(False)
    assert window.statusBar().currentMessage() == "Cannot start: network.dim: must be at least 1"


def test_the_idle_status_bar_follows_the_block_without_hiding_other_messages(qtbot):
    from gui.main_window import DISCARD, MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.ask_unsaved = lambda: DISCARD
    blocked = window.training_tab.blocked_reasons  # a new project has no images yet
    assert blocked and window.statusBar().currentMessage() == f"Cannot start: {blocked[0]}"
    window._on_parameters_validity_changed(True, ["network.dim: must be at least 1"])
    assert window.statusBar().currentMessage() == "Cannot start: network.dim: must be at least 1"
    window._on_parameters_validity_changed(False, [])
    assert window.statusBar().currentMessage() == "Ready"
    window.statusBar().showMessage("Opened my.toml")
    window._on_parameters_validity_changed(True, ["network.dim: must be at least 1"])
    assert window.statusBar().currentMessage() == "Opened my.toml"


def test_save_and_sample_now_are_offered_while_paused(tab, tmp_path):
    config = tiny_config(tmp_path, steps=4)
    config.sampling.prompts = "kiln --w 64 --h 64 --s 1"
    tab.run_config = config
    tab._set_state("paused")
    assert tab.save_button.isEnabled() and tab.sample_button.isEnabled()


# ---------------------------------------------------------------- plots
def test_a_new_run_starts_with_clean_axes(qtbot):
    plots = TrainingPlots()
    for plot in plots.all:
        qtbot.addWidget(plot)
    for step in range(1, 501):
        plots.add_step(StepMetrics(step, 1, 500, 1000.0 + step, 1.0, {"unet": 1e-4}))
    plots.redraw_now()
    view = plots.loss.plot_item.getViewBox()
    view.updateAutoRange()  # as painting does
    assert view.viewRange()[0][1] >= 500 and view.viewRange()[1][1] >= 1000
    plots.clear()
    plots.redraw_now()
    view.updateAutoRange()
    assert [round(v) for v in view.viewRange()[0]] == [0, 1] and [round(v) for v in view.viewRange()[1]] == [0, 1]
    plots.add_step(StepMetrics(1, 1, 10, 0.5, 0.5, {"unet": 1e-4}))
    plots.redraw_now()
    view.updateAutoRange()
    assert view.viewRange()[1][1] < 10  # the new run's first point decides the range again


def test_a_curve_with_one_point_shows_it(qtbot):
    plot = LivePlot("Loss", "step", "loss")
    qtbot.addWidget(plot)
    plot.add_series("raw", "#336699")
    plot.append("raw", 1, 0.5)
    plot.refresh()
    curve = plot._series["raw"][1]
    assert curve.opts["symbol"] == "o"
    plot.append("raw", 2, 0.4)
    plot.refresh()
    assert curve.opts["symbol"] is None  # a line shows two points; dots would clutter 100k


# ---------------------------------------------------------------- epochs cut short
def _steps_per_epoch(config) -> int:
    return plan_dataset(config.dataset, config.training).steps.steps_per_epoch


def test_an_epoch_cut_short_by_max_steps_has_no_epoch_loss(tmp_path):
    config = tiny_config(tmp_path, steps=1)
    assert _steps_per_epoch(config) > 1  # one step ends the run inside its first epoch
    sink = ListSink()
    result = Trainer(config, CallbackSink(sink.emit)).run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    assert sink.of(EpochMetrics) == []
    assert any("partway through epoch 1" in e.text for e in sink.of(Status))
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["mean_last_epoch_loss"] is None


def test_whole_epochs_before_the_cut_keep_their_loss(tmp_path):
    config = tiny_config(tmp_path)
    config.training.max_train_steps = _steps_per_epoch(config) + 1
    sink = ListSink()
    result = Trainer(config, CallbackSink(sink.emit)).run()
    epochs = sink.of(EpochMetrics)
    assert [e.epoch for e in epochs] == [1]
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["mean_last_epoch_loss"] == pytest.approx(epochs[0].mean_loss)


# ---------------------------------------------------------------- save and sample while paused
def test_save_now_while_paused_saves_at_once(tmp_path):
    config = tiny_config(tmp_path, steps=50)
    control = Control()
    saved = []

    from core.training.events import CheckpointSaved

    def on_event(event):
        if isinstance(event, StepMetrics) and event.step == 2:
            control.pause()
        if isinstance(event, Status) and event.phase == "paused" and not saved:
            control.request_save()  # asked once the run is held, as the button does
        if isinstance(event, CheckpointSaved) and event.kind == "manual":
            saved.append(event.step)
            control.request_stop()  # ends the pause too

    sink = ListSink()

    def emit(event):
        sink.emit(event)
        on_event(event)

    guard = threading.Timer(30, control.request_stop)  # never wait for ever on a save that does not come
    guard.start()
    try:
        result = Trainer(config, CallbackSink(emit), control).run()
    finally:
        guard.cancel()
    assert isinstance(result, Finished) and result.reason == "stopped", getattr(result, "traceback", "")
    assert saved == [2]  # saved during the pause, before any further step
    assert max(e.step for e in sink.of(StepMetrics)) == 2
