"""The Runs tab: listing run folders (hand-made and real), comparing the selected ones
(overlaid curves, legend, table) and exporting the comparison."""

import copy
import json
import math
from pathlib import Path

import pytest

from core.studies.chart import RUN_COLOURS
from core.studies.compare import comparison_table, format_cell
from core.config.schema import TrainConfig
from core.config.presets import dumps_preset
from core.studies.run_index import load_run
from gui.settings import settings
from gui.project import Project
from gui.runs_tab import FOLDERS_KEY, RunsTab

TIMEOUT_MS = 20_000


def make_run(root: Path, folder: str, resolution: int, *, steps: int = 10, started: float = 1.7e9,
             groups=("unet", "text_encoder")) -> Path:
    """A run folder as the engine writes it, with a loss that falls from 1.0 and a resolution."""
    run = root / folder
    run.mkdir(parents=True)
    config = TrainConfig()
    config.dataset.resolution = (resolution, resolution)
    config.output.output_name = f"kiln_{resolution}"
    (run / "config.toml").write_text(dumps_preset(config, sparse=False), encoding="utf-8")
    lines = []
    for step in range(1, steps + 1):
        lines.append({"type": "step", "step": step, "epoch": 1 + (step - 1) // 5, "loss": 1.0 / step,
                      "avg_loss": 1.0 / step, "lr": {g: 1e-4 * step for g in groups}, "dlr": {},
                      "memory_reserved_mb": 100.0 + resolution / 10, "memory_kind": "rss", "elapsed_s": step * 0.5})
        if step % 5 == 0:
            lines.append({"type": "epoch", "epoch": step // 5, "step": step, "mean_loss": 2.0 / step})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    summary = {"status": "completed", "name": config.output.output_name, "steps": steps, "total_steps": steps,
               "epochs": 2, "total_epochs": 2, "wall_seconds": steps * 0.5, "peak_vram_mb": 100.0 + resolution / 10,
               "memory_kind": "rss", "final_loss": 1.0 / steps, "mean_last_epoch_loss": 2.0 / steps,
               "lora_path": None, "started_at": started, "finished_at": started + 5, "error": None}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    plan = {"buckets": [{"resolution": [resolution, resolution], "count": 4}] * (resolution // 128),
            "images": [], "batches_per_epoch": resolution // 64, "epochs": 2, "max_train_steps": steps}
    (run / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    return run


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for index, resolution in enumerate((256, 384, 512)):
        make_run(root, f"20250101-00000{index}-kiln_{resolution}", resolution, started=1.7e9 + index)
    broken = root / "20250101-000009-broken"
    broken.mkdir()
    (broken / "config.toml").write_text("[network\nnot toml", encoding="utf-8")
    (broken / "metrics.jsonl").write_text("", encoding="utf-8")
    return root


@pytest.fixture
def tab(qtbot, runs_root):
    settings().remove(FOLDERS_KEY)
    project = Project()
    project.config.output.output_dir = str(runs_root)
    tab = RunsTab(project)
    tab.resize(1300, 900)
    qtbot.addWidget(tab)
    messages = tab.messages = []  # closures over the list, not the tab: no reference cycle
    tab.show_message = lambda title, text: messages.append((title, text))
    load(qtbot, tab)
    return tab


def load(qtbot, tab):
    with qtbot.waitSignal(tab.run_list.loaded, timeout=TIMEOUT_MS):
        tab.refresh()


def select(qtbot, tab, paths):
    with qtbot.waitSignal(tab.compare.drawn, timeout=TIMEOUT_MS):
        tab.run_list.select_paths(paths)


def good_paths(runs_root):
    return sorted(str(p) for p in runs_root.iterdir() if "kiln" in p.name)


def cell(tab, row, column):
    """The text in ``column`` (its index, or its header's name)."""
    from gui.run_list import COLUMNS

    return tab.run_list.table.item(row, COLUMNS.index(column) if isinstance(column, str) else column).text()


def test_every_run_is_listed_newest_first_with_its_numbers(tab, runs_root):
    table = tab.run_list.table
    assert table.rowCount() == 4
    names = [cell(tab, row, 0) for row in range(4)]
    assert names[:3] == ["kiln_512", "kiln_384", "kiln_256"]  # started later = listed higher
    row = names.index("kiln_384")
    assert cell(tab, row, 2) == "completed" and cell(tab, row, 3) == "10/10" and cell(tab, row, 4) == "2/2"
    assert cell(tab, row, 5) == "00:05" and cell(tab, row, 7) == "138 MB RAM"
    assert cell(tab, row, 6) == "–"  # written without peaks by phase, as older runs were
    assert cell(tab, row, "final loss") == "0.1000" and cell(tab, row, "last-epoch loss") == "0.2000"
    assert cell(tab, row, "VRAM forecast") == "– (CPU run)"  # a CPU run forecasts nothing
    assert tab.count_label.text() == "4 runs, 1 with problems"


def test_a_broken_run_is_listed_with_its_problem(tab):
    row = [cell(tab, r, 0) for r in range(4)].index("20250101-000009-broken")
    assert "config.toml" in cell(tab, row, "problem")
    assert "config.toml" in tab.run_list.table.item(row, 0).toolTip()


def test_selected_runs_are_overlaid_one_colour_each_named_by_what_differs(qtbot, tab, runs_root):
    select(qtbot, tab, good_paths(runs_root))
    view = tab.compare
    labels = ["resolution=256", "resolution=384", "resolution=512"]
    assert sorted(view.labels) == labels and view.varied == ["dataset.resolution"]
    assert view.varied_label.text() == "Differs: dataset.resolution"
    assert sorted(view.loss.series_names()) == labels  # smoothed only, by default
    colours = [view.loss._series[label][1].opts["pen"].color().name().upper() for label in view.labels]
    assert colours == list(RUN_COLOURS[:3])  # distinct, and the same cycle as the exported charts
    for label in labels:
        assert label in view.legend.text()
        xs, ys = view.loss.series(label).view()
        assert xs.tolist() == list(range(1, 11)) and ys[0] == pytest.approx(1.0) and ys[-1] < ys[0]
        assert view.epoch_loss.series(label).view()[0].tolist() == [1, 2]
        assert len(view.memory.series(label)) == 10
    assert len(view.lr.series_names()) == 6  # two parameter groups per run
    assert not view.dlr.series_names() and view.dlr.note.text() == "d·lr appears with Prodigy and D-Adaptation"
    assert view.dlr.plot_widget.isHidden() and not view.dlr.note.isHidden()


def test_the_raw_loss_can_be_shown_beside_or_instead_of_the_smoothed(qtbot, tab, runs_root):
    select(qtbot, tab, good_paths(runs_root)[:2])
    view = tab.compare
    view.raw_box.setChecked(True)
    assert len(view.loss.series_names()) == 4
    raw = next(name for name in view.loss.series_names() if name.endswith("(raw)"))
    assert view.loss.series(raw).view()[1].tolist() == [1.0 / s for s in range(1, 11)]
    view.smoothed_box.setChecked(False)
    assert all(name.endswith("(raw)") for name in view.loss.series_names())


def test_the_table_under_the_plots_is_the_comparison_table(qtbot, tab, runs_root):
    paths = good_paths(runs_root)
    select(qtbot, tab, paths)
    order = [str(r.path) for r in tab.compare.records]
    assert order == paths[::-1]  # the list's order: newest first
    expected = comparison_table([load_run(Path(p)) for p in order])
    table = tab.compare.table
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers == expected.columns and "buckets" in headers and "batches/epoch" in headers
    shown = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
    # The run column is the short label (tests/test_compare_readable.py); the rest is the table.
    assert [row[1:] for row in shown] == [[format_cell(c, v) for c, v in zip(expected.columns[1:], row[1:])]
                                          for row in expected.rows]
    assert [row[0] for row in shown] == ["res=512", "res=384", "res=256"]
    buckets = headers.index("buckets")
    assert [row[buckets] for row in shown] == ["4", "3", "2"]  # 512/384/256 px in make_run


def test_curves_are_read_only_for_the_selected_runs(qtbot, tab, runs_root):
    paths = good_paths(runs_root)
    select(qtbot, tab, paths[:1])
    assert set(tab.compare._cache) == {paths[0]}
    assert tab.compare.varied_label.text().startswith("One run selected")


def test_export_writes_the_table_and_charts(qtbot, tab, runs_root, tmp_path):
    select(qtbot, tab, good_paths(runs_root))
    written = tab.export_comparison(tmp_path / "export")
    names = {p.name for p in written}
    assert {"comparison.csv", "comparison.md", "loss_by_step.png", "memory_by_step.png"} <= names
    csv = (tmp_path / "export" / "comparison.csv").read_text(encoding="utf-8")
    assert "resolution=256" in csv and "resolution=512" in csv and tab.messages == []


def test_an_export_that_cannot_be_written_says_so(qtbot, tab, runs_root, tmp_path):
    select(qtbot, tab, good_paths(runs_root))
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    assert tab.export_comparison(blocker / "inside") is None
    assert tab.messages and tab.messages[0][0] == "Export failed" and "a file" in tab.messages[0][1]


def test_an_added_folder_is_listed_and_remembered(qtbot, tab, tmp_path):
    other = tmp_path / "elsewhere"
    make_run(other, "20250202-000000-kiln_640", 640)
    with qtbot.waitSignal(tab.run_list.loaded, timeout=TIMEOUT_MS):
        tab.add_folder(other)
    assert tab.run_list.table.rowCount() == 5
    again = RunsTab(tab.project)
    qtbot.addWidget(again)
    assert other in again.folders()
    with qtbot.waitSignal(again.run_list.loaded, timeout=TIMEOUT_MS):
        again.remove_folder(other)
    assert again.run_list.table.rowCount() == 4 and other not in again.added_folders()
    tab.add_folder(tmp_path / "missing")
    assert "does not exist" in tab.messages[-1][1]


def test_select_runs_reads_the_folders_again_and_selects_exactly_those(qtbot, tab, runs_root):
    new = make_run(runs_root, "20250303-000000-kiln_768", 768, started=1.8e9)
    wanted = [str(new), good_paths(runs_root)[0]]
    with qtbot.waitSignal(tab.compare.drawn, timeout=TIMEOUT_MS):
        tab.select_runs(wanted)
    assert sorted(tab.run_list.selected_paths()) == sorted(wanted)
    assert sorted(tab.compare.labels) == ["resolution=256", "resolution=768"]


def test_a_run_still_writing_its_metrics_is_read_again(qtbot, tab, runs_root):
    path = good_paths(runs_root)[0]
    select(qtbot, tab, [path])
    with open(Path(path) / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "step", "step": 11, "epoch": 3, "loss": 0.05, "lr": {}}) + "\n")
    with qtbot.waitSignal(tab.compare.drawn, timeout=TIMEOUT_MS):
        load(qtbot, tab)
    label = tab.compare.labels[0]
    assert len(tab.compare.loss.series(label)) == 11


@pytest.mark.slow
def test_real_runs_are_listed_and_compared(qtbot, tmp_path):
    from core.training.engine import Trainer
    from core.training.events import ListSink
    from tests.engine_fixtures import tiny_config

    results = []
    base = tiny_config(tmp_path, steps=3)
    for dim in (2, 4):
        config = copy.deepcopy(base)
        config.network.dim = dim
        config.output.output_dir = str(tmp_path / "runs")
        results.append(Trainer(config, ListSink()).run())
    project = Project()
    project.config.output.output_dir = str(tmp_path / "runs")
    tab = RunsTab(project)
    qtbot.addWidget(tab)
    load(qtbot, tab)
    assert tab.run_list.table.rowCount() == 2
    assert {cell(tab, r, 2) for r in range(2)} == {"completed"} and {cell(tab, r, 3) for r in range(2)} == {"3/3"}
    select(qtbot, tab, [r.run_dir for r in results])
    assert "network.dim" in tab.compare.varied and sorted(tab.compare.labels) == ["dim=2", "dim=4"]
    assert all(len(tab.compare.loss.series(label)) == 3 for label in tab.compare.labels)
    assert all(math.isfinite(v) for v in tab.compare.loss.series("dim=2").view()[1])


def test_a_selection_asked_for_before_a_refresh_is_shown_waits_for_it(qtbot, tab, runs_root):
    new = make_run(runs_root, "20250404-000000-kiln_896", 896, started=1.9e9)
    tab.refresh()
    assert tab.run_list.wait(10)  # the reading thread has ended; its answer is still queued
    tab.run_list.select_paths([str(new)])
    qtbot.waitUntil(lambda: tab.run_list.selected_paths() == [str(new)], timeout=TIMEOUT_MS)


def test_the_run_list_shows_the_training_peak_beside_the_runs_peak(tmp_path):
    from gui.run_list import COLUMNS, row_cells
    from tests.test_run_index import write_run

    new = load_run(write_run(tmp_path, "new", peak=3000.0, reserved=3300.0,
                             phases={"training": {"allocated_mb": 2500.0, "reserved_mb": 2900.0}}))
    cells = dict(zip(COLUMNS, row_cells(new)))
    assert cells["training peak"] == ("2500 MB VRAM (reserved 2900)", 2500.0)
    assert cells["peak memory"] == ("3000 MB VRAM", 3000.0)
    old = dict(zip(COLUMNS, row_cells(load_run(write_run(tmp_path, "old", peak=1234.0)))))
    assert old["training peak"] == ("–", None) and old["peak memory"] == ("1234 MB VRAM", 1234.0)


def test_the_run_list_shows_the_forecast_beside_the_measured_peak(tmp_path):
    from gui.run_list import COLUMNS, forecast_tip, row_cells
    from tests.test_run_index import forecast_of, write_run

    gpu = load_run(write_run(tmp_path, "gpu", peak=2500.0, forecast=forecast_of(2000.0, 2600.0)))
    cells = dict(zip(COLUMNS, row_cells(gpu)))
    assert cells["VRAM forecast"] == ("2000 MB (measured 1.25×)", 2000.0)
    assert "2600 MB as the driver" in forecast_tip(gpu)
    failed = load_run(write_run(tmp_path, "failed", forecast={"error": "OSError: no unet config"}))
    assert dict(zip(COLUMNS, row_cells(failed)))["VRAM forecast"] == ("could not be made", None)
    assert "OSError: no unet config" in forecast_tip(failed)
    older = load_run(write_run(tmp_path, "older"))
    assert dict(zip(COLUMNS, row_cells(older)))["VRAM forecast"] == ("–", None)
    cpu = load_run(write_run(tmp_path, "cpu", kind="rss", forecast=forecast_of(600.0)))
    assert dict(zip(COLUMNS, row_cells(cpu)))["VRAM forecast"] == ("600 MB", 600.0)  # RAM measured: no ratio


def test_the_compare_table_shows_forecast_and_ratio_and_the_list_says_why_one_is_missing(qtbot, tab, runs_root):
    from tests.test_run_index import forecast_of

    gpu = make_run(runs_root, "20250505-000000-kiln_640", 640, started=2e9)
    summary = json.loads((gpu / "summary.json").read_text())
    summary.update(memory_kind="cuda", peak_vram_mb=2500.0, vram_forecast=forecast_of(2000.0))
    (gpu / "summary.json").write_text(json.dumps(summary))
    failed = make_run(runs_root, "20250505-000001-kiln_768", 768, started=2e9 + 1)
    summary = json.loads((failed / "summary.json").read_text())
    summary.update(memory_kind="cuda", vram_forecast={"error": "OSError: no unet config"})
    (failed / "summary.json").write_text(json.dumps(summary))
    load(qtbot, tab)
    select(qtbot, tab, [str(gpu), str(failed)])
    table = tab.compare.table
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    forecast, ratio = headers.index("VRAM forecast (MB)"), headers.index("measured / forecast")
    assert headers[forecast - 1] == "peak VRAM (MB)"
    rows = {table.item(r, 0).text(): (table.item(r, forecast).text(), table.item(r, ratio).text())
            for r in range(table.rowCount())}
    assert sorted(rows.values()) == [("2000", "1.25×"), ("–", "–")]
    from gui.run_list import FORECAST_COLUMN

    names = [cell(tab, r, 0) for r in range(tab.run_list.table.rowCount())]
    assert tab.run_list.table.horizontalHeaderItem(FORECAST_COLUMN).text() == "VRAM forecast"
    item = tab.run_list.table.item(names.index("kiln_768"), FORECAST_COLUMN)
    assert item.text() == "could not be made" and "OSError: no unet config" in item.toolTip()


def test_a_run_without_a_whole_epoch_shows_a_note_in_place_of_the_epoch_plot(qtbot, tab, runs_root):
    make_run(runs_root, "20250101-000005-kiln_short", 256, steps=4, started=1.7e9 + 5)  # 5 steps make an epoch
    tab.refresh()
    load(qtbot, tab)
    select(qtbot, tab, [runs_root / "20250101-000005-kiln_short"])
    view = tab.compare
    assert view.epoch_loss.plot_widget.isHidden() and not view.epoch_loss.note.isHidden()
    assert "whole epoch" in view.epoch_loss.note.text()
    assert view.validation_box.isHidden()  # none of these runs has a validation loss
    select(qtbot, tab, good_paths(runs_root)[:1])  # a run with epochs: the plot again
    assert not view.epoch_loss.plot_widget.isHidden() and view.epoch_loss.note.isHidden()
