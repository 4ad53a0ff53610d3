"""The live training plots and the error dialog, fed with synthetic events (offscreen)."""



import csv  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QPointF, QUrl  # noqa: E402
from PySide6.QtGui import QDesktopServices, QImage  # noqa: E402

from core.training.events import EpochMetrics, Failed, StepMetrics  # noqa: E402
from core.training.metrics import smooth  # noqa: E402
from gui.error_dialog import ErrorDialog  # noqa: E402
from gui.training_plots import TrainingPlots  # noqa: E402


def step(n, loss=None, dlr=None, kind="rss", allocated=100.0, peak=120.0):
    return StepMetrics(n, 1, 1000, loss if loss is not None else 1.0 / n, 0.5,
                       {"unet": 1e-4, "text_encoder": 5e-5}, dlr or {}, allocated, allocated, peak, kind)


@pytest.fixture
def plots(qtbot):
    plots = TrainingPlots()
    for plot in plots.all:
        qtbot.addWidget(plot)
        plot.resize(500, 350)
        plot.show()
    return plots


def test_loss_is_drawn_raw_and_smoothed_and_the_slider_resmooths_it(plots):
    losses = np.random.default_rng(0).uniform(0.05, 0.2, 300)
    for i, value in enumerate(losses, 1):
        plots.add_step(step(i, value))
    plots.redraw_now()
    x, y = plots.loss._series["smoothed"][1].getData()
    assert len(x) == 300 and np.allclose(y, smooth(losses.tolist(), 0.9))
    plots.loss.set_smoothing(0.5)
    assert plots.loss.smoothing_label.text() == "smoothing 0.50" and plots.throttle.dirty
    plots.redraw_now()
    _, y = plots.loss._series["smoothed"][1].getData()
    assert np.allclose(y, smooth(losses.tolist(), 0.5))
    _, raw = plots.loss._series["raw"][1].getData()
    assert np.array_equal(raw, losses)


def test_big_curves_are_peak_downsampled_and_clipped_to_the_view(plots):
    curve = plots.loss._series["raw"][1]
    assert curve.opts["autoDownsample"] and curve.opts["downsampleMethod"] == "peak" and curve.opts["clipToView"]


def test_the_readout_names_the_point_nearest_the_mouse(plots):
    for i in range(1, 11):
        plots.add_step(step(i, loss=i / 10))
    plots.redraw_now()
    plot = plots.loss
    view = plot.plot_item.getViewBox()
    view.setRange(xRange=(0, 11), yRange=(0, 1.1), padding=0)
    plot._on_scene_mouse_moved(view.mapViewToScene(QPointF(4.2, 0.41)))
    assert plot.readout.text().startswith("step 4 · raw 0.4")
    plot._on_scene_mouse_moved(QPointF(-50, -50))
    assert plot.readout.text().strip() == ""


def test_the_readout_works_on_a_log_scale(plots):
    for i in range(1, 11):
        plots.add_step(step(i, dlr={"unet": 10.0 ** -i}))
    plots.redraw_now()
    plot = plots.dlr
    view = plot.plot_item.getViewBox()
    view.setRange(xRange=(0, 11), yRange=(-11, 0), padding=0)  # log10 units
    plot._on_scene_mouse_moved(view.mapViewToScene(QPointF(3, -3)))
    assert plot.readout.text() == "step 3 · unet 0.001"


def test_dlr_shows_a_note_until_the_optimizer_reports_it(plots):
    plots.add_step(step(1))
    assert not plots.dlr.active and plots.dlr.note.isVisible()
    plots.add_step(step(2, dlr={"unet": 1e-4, "text_encoder": 2e-4}))
    assert plots.dlr.active and not plots.dlr.note.isVisible() and plots.dlr.log_y
    assert plots.dlr.series_names() == ["unet", "text_encoder"]
    plots.clear()
    assert not plots.dlr.active and plots.dlr.series_names() == []


def test_memory_axis_says_what_was_measured(plots):
    plots.add_step(step(1, kind="cuda", allocated=2100.0, peak=2500.0))
    assert plots.memory.y_label == "VRAM (MB)"
    assert plots.memory.series_names() == ["allocated", "training peak", "training reserved",
                                           "run peak"]
    assert plots.memory.plot_item.getAxis("left").labelText == "VRAM (MB)"
    plots.clear()
    plots.add_step(step(1, kind="rss"))
    assert plots.memory.y_label == "RSS (MB)"
    assert plots.memory.series_names() == ["RSS", "training peak", "run peak"]  # nothing "reserved"
    assert len(plots.memory.series("RSS")) == 1


def test_epoch_loss_gets_one_marker_per_epoch(plots):
    for epoch in (1, 2, 3):
        plots.add_epoch(EpochMetrics(epoch, epoch * 5, 0.3 / epoch))
    plots.redraw_now()
    x, y = plots.epoch_loss._series["mean loss"][1].getData()
    assert x.tolist() == [1, 2, 3] and plots.epoch_loss._series["mean loss"][1].opts["symbol"] == "o"


def test_a_plot_exports_its_numbers_as_csv_and_its_picture_as_png(plots, tmp_path):
    for i in range(1, 6):
        plots.add_step(step(i, loss=i / 10))
    plots.redraw_now()
    plots.lr.export_csv(tmp_path / "lr.csv")
    rows = list(csv.reader(open(tmp_path / "lr.csv", encoding="utf-8")))
    assert rows[0] == ["step", "unet", "text_encoder"] and len(rows) == 6
    assert [float(v) for v in rows[5]] == [5.0, 1e-4, 5e-5]
    plots.loss.export_csv(tmp_path / "loss.csv")
    assert next(csv.reader(open(tmp_path / "loss.csv", encoding="utf-8"))) == ["step", "raw", "smoothed"]
    plots.loss.export_png(tmp_path / "loss.png")
    image = QImage(str(tmp_path / "loss.png"))
    assert not image.isNull() and image.width() > 100


def test_redraws_wait_for_the_throttle(plots):
    clock = [0.0]
    plots = TrainingPlots(clock=lambda: clock[0])
    plots.add_step(step(1))
    # One redraw cycle refreshes one plot per tick, so a paint never holds up the window
    # for all the plots at once.
    assert all(plots.tick() for _ in plots.all) and plots.redraws == 1
    assert not plots.tick()  # drawn; nothing new
    plots.add_step(step(2))
    assert not plots.tick()  # new data, but too soon
    clock[0] += 0.2
    assert all(plots.tick() for _ in plots.all) and plots.redraws == 2


def failed(log_path="/tmp/run/log.txt"):
    return Failed("oom", "Out of GPU memory.", ("lower training.batch_size from 4 to 2",
                                                "turn on training.gradient_checkpointing"),
                  "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory", log_path, "/tmp/run")


def test_the_error_dialog_shows_summary_advice_and_hides_the_traceback(qtbot):
    dialog = ErrorDialog(failed())
    qtbot.addWidget(dialog)
    dialog.show()
    assert "Out of GPU memory." in dialog.summary_label.text()
    assert "<li>lower training.batch_size from 4 to 2</li>" in dialog.advice_label.text()
    assert "/tmp/run/log.txt" in dialog.log_label.text() and dialog.windowTitle().startswith("Out of memory")
    assert not dialog.details.isVisible()
    dialog.details_button.click()
    assert dialog.details.isVisible() and dialog.details.isReadOnly()
    assert "RuntimeError: CUDA out of memory" in dialog.details.toPlainText()
    assert dialog.details_button.text() == "Hide details"
    assert "lower training.batch_size" in dialog.details_text() and "Traceback" in dialog.details_text()


def test_open_log_folder_opens_the_run_folder(qtbot, monkeypatch):
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url))
    dialog = ErrorDialog(failed())
    qtbot.addWidget(dialog)
    dialog.open_folder_button.click()
    assert opened == [QUrl.fromLocalFile("/tmp/run")]
    no_log = ErrorDialog(Failed("error", "Could not start.", (), "trace", None, None))
    qtbot.addWidget(no_log)
    assert not no_log.open_folder_button.isEnabled() and "No log file" in no_log.log_label.text()


def test_the_memory_plot_shows_the_training_peak_allocated_and_reserved_and_the_run_peak(plots):
    metrics = replace(step(1, kind="cuda", allocated=2100.0, peak=2500.0),
                      memory_peak_reserved_mb=2800.0, memory_run_peak_mb=6000.0)  # caching set the run's peak
    plots.add_step(metrics)
    memory = plots.memory
    assert memory.series_names() == ["allocated", "training peak", "training reserved",
                                     "run peak"]
    assert [memory.series(name).last()[1] for name in memory.series_names()] == [2100.0, 2500.0, 2800.0, 6000.0]


def test_the_epoch_plot_shows_a_note_until_the_first_whole_epoch(plots):
    plots.add_step(step(1))
    assert plots.epoch_loss.plot_widget.isHidden() and "first whole epoch" in plots.epoch_loss.note.text()
    plots.add_epoch(EpochMetrics(1, 5, 0.5))
    assert not plots.epoch_loss.plot_widget.isHidden() and plots.epoch_loss.note.isHidden()
    plots.clear()  # the next run starts without epochs
    assert plots.epoch_loss.plot_widget.isHidden() and not plots.epoch_loss.note.isHidden()


@pytest.mark.parametrize("kind", ["cuda", "rss"])
def test_the_memory_legend_fits_its_title_line_at_1280x720(qtbot, kind):
    from gui.training_plots import MemoryPlot

    plot = MemoryPlot()
    qtbot.addWidget(plot)
    plot.resize(410, 250)  # the memory plot's width in a 1280x720 window
    plot.show()
    plot.add_point(1, 100.0, 120.0, kind, peak_reserved_mb=150.0, run_peak_mb=200.0)
    title = plot.plot_item.titleLabel.item
    assert title.boundingRect().width() <= plot.plot_item.width()
