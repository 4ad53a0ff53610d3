"""The comparison reads at a glance: a short run label (what was varied) with the whole
difference on hover, and a memory axis that does not blow noise up into a climb (offscreen)."""

import pytest

from core.config.schema import OptimizerType
from core.studies.run_index import load_run
from gui.compare_view import CompareView
from gui.plots import MEMORY_MIN_SPAN_MB
from tests.test_run_index import make_config, step_record, write_run

TIMEOUT_MS = 15000


@pytest.fixture
def view(qtbot):
    view = CompareView()
    qtbot.addWidget(view)
    view.resize(1260, 620)
    view.show()
    return view


def _show(qtbot, view, records):
    with qtbot.waitSignal(view.drawn, timeout=TIMEOUT_MS):
        view.show_runs(records)


def _sweep(tmp_path, memory=lambda i, step: 1000.0 + step % 3):
    records = []
    for i, lr in enumerate((2e-4, 5e-4)):
        config = make_config(f"run{i}")
        config.optimizer.learning_rate = lr
        config.optimizer.type = OptimizerType.ADAMW
        config.sampling.prompts = f"a very long prompt that names the style, the subject and the light {i}"
        metrics = [step_record(s, memory=memory(i, s)) for s in range(1, 5)]
        records.append(load_run(write_run(tmp_path, f"run{i}", config, metrics=metrics, started=1e9 + i)))
    return records


def test_the_run_column_shows_the_varied_values_shortly_and_all_of_it_on_hover(qtbot, view, tmp_path):
    _show(qtbot, view, _sweep(tmp_path))
    assert set(view.varied) == {"optimizer.learning_rate", "sampling.prompts"}
    first = view.table.item(0, 0)
    assert first.text().startswith("lr=0.0002") and len(first.text()) <= 40
    assert "…" in first.text()  # the prompt is cut in the cell...
    tip = first.toolTip()
    assert "optimizer.learning_rate = 0.0002" in tip  # ...and whole on hover, with the run's folder
    assert "sampling.prompts = a very long prompt that names the style, the subject and the light 0" in tip
    assert "run0" in tip
    assert view.table.item(1, 0).text().startswith("lr=0.0005")


def test_the_memory_axis_spans_at_least_half_a_gigabyte(qtbot, view, tmp_path):
    _show(qtbot, view, _sweep(tmp_path))  # 1000-1002 MB: noise
    low, high = view.memory.plot_item.getViewBox().viewRange()[1]
    assert high - low >= MEMORY_MIN_SPAN_MB - 1e-6
    assert low <= 1000 and high >= 1002  # the curve is still in view


def test_a_real_memory_difference_keeps_its_own_span(qtbot, view, tmp_path):
    _show(qtbot, view, _sweep(tmp_path, memory=lambda i, step: 1000.0 + 2000.0 * i))
    low, high = view.memory.plot_item.getViewBox().viewRange()[1]
    assert low <= 1000 and high >= 3000 and high - low < 2600


def test_the_training_memory_plot_has_the_same_least_span(qtbot):
    from gui.training_plots import MemoryPlot

    plot = MemoryPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 300)
    plot.show()
    for step in range(1, 6):
        plot.add_point(step, 1000.0 + step % 2, 1001.0, "rss")
    plot.refresh()
    plot.plot_item.getViewBox().updateAutoRange()
    low, high = plot.plot_item.getViewBox().viewRange()[1]
    assert high - low >= MEMORY_MIN_SPAN_MB - 1e-6


def test_titles_and_axis_labels_fit_their_plots_on_a_1280x720_screen(qtbot, view, tmp_path):
    view.resize(1240, 400)  # what the Runs tab leaves it there, under the list of runs
    _show(qtbot, view, _sweep(tmp_path))
    qtbot.wait(10)
    for plot in (p for p in view.plots if p.plot_widget.isVisible()):  # d·lr shows a note instead here
        title = plot.plot_item.titleLabel
        assert title.item.boundingRect().width() <= plot.plot_widget.width(), plot.title
        left = plot.plot_item.getAxis("left")
        label_len = left.label.boundingRect().width()
        assert label_len <= left.height(), plot.y_label
