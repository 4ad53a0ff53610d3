"""Comparing runs: what varies, the labels, the table and its CSV/Markdown, the export."""

import csv
import io

import numpy as np
from PIL import Image, ImageColor

from core.studies.chart import RUN_COLOURS
from core.studies.compare import (comparison_table, export_comparison, format_param, legend_label, legend_labels,
                          table_to_csv, table_to_markdown, table_to_text, varied_params)
from core.config.schema import Duration, NetworkType, SubsetParams
from core.studies.run_index import load_run
from tests.test_run_index import forecast_of, make_config, step_record, write_run


def _runs(tmp_path, *configs, **kwargs):
    return [load_run(write_run(tmp_path, f"run{i}", c, started=1000.0 + i, **kwargs)) for i, c in enumerate(configs)]


def test_only_the_settings_that_differ_vary_and_names_never_count(tmp_path):
    records = _runs(tmp_path, make_config("a", 512), make_config("b", 768), make_config("c", 1024))
    assert varied_params(records) == ["dataset.resolution"]


def test_output_folder_is_not_a_difference_but_seed_is(tmp_path):
    first, second = make_config(), make_config()
    second.output.output_dir = "/elsewhere"
    second.training.seed = 7
    assert varied_params(_runs(tmp_path, first, second)) == ["training.seed"]


def test_the_step_count_of_runs_trained_by_epochs_is_no_difference(tmp_path):
    first, second = make_config(), make_config()
    for config, steps in ((first, 100), (second, 200)):
        config.training.duration, config.training.max_train_steps = Duration.EPOCHS, steps
    assert varied_params(_runs(tmp_path, first, second)) == []


def test_a_subset_only_one_run_has_varies_and_reads_absent(tmp_path):
    first, second = make_config(), make_config()
    second.dataset.subsets.append(SubsetParams(image_dir="/data/reg", is_reg=True))
    records = _runs(tmp_path, first, second)
    varied = varied_params(records)
    assert "dataset.subsets[1].image_dir" in varied and "dataset.subsets[1].is_reg" in varied
    row = comparison_table(records).rows[0]
    assert row[1 + varied.index("dataset.subsets[1].image_dir")] == "absent"


def test_runs_without_a_readable_config_do_not_take_part(tmp_path):
    records = _runs(tmp_path, make_config("a", 512), make_config("b", 512))
    (records[1].path / "config.toml").write_text("not toml [")
    broken = load_run(records[1].path)
    assert varied_params([records[0], broken]) == []
    assert varied_params(records[:1]) == []


def test_legend_labels_name_what_differs_shortly(tmp_path):
    first, second = make_config("a", 512, dim=8), make_config("b", 768, dim=16)
    records = _runs(tmp_path, first, second)
    varied = varied_params(records)
    assert varied == ["dataset.resolution", "network.dim"]
    assert legend_label(records[1], varied) == "resolution=768, dim=16"
    assert legend_label(records[1], []) == "run1"


def test_legend_labels_keep_the_group_where_short_names_clash(tmp_path):
    first, second = make_config(), make_config()
    second.network.type = NetworkType.LOCON
    second.optimizer.type = second.optimizer.type.LION
    records = _runs(tmp_path, first, second)
    assert legend_label(records[1], varied_params(records)) == "network.type=LoCon, optimizer.type=Lion"


def test_runs_with_the_same_settings_get_their_folder_added(tmp_path):
    records = _runs(tmp_path, make_config("a", 512), make_config("b", 512), make_config("c", 768))
    assert legend_labels(records) == ["resolution=512 (run0)", "resolution=512 (run1)", "resolution=768"]


def test_copies_of_one_folder_name_are_told_apart_by_their_parent(tmp_path):
    records = [load_run(write_run(tmp_path / parent, "run", make_config())) for parent in ("gpu1", "gpu2")]
    assert legend_labels(records) == ["gpu1/run", "gpu2/run"]


def test_values_are_formatted_for_reading():
    assert format_param("dataset.resolution", (768, 512)) == "768x512"
    assert format_param("optimizer.learning_rate", 1e-4) == "0.0001"
    assert format_param("optimizer.betas", (0.9, 0.999)) == "0.9,0.999"
    assert format_param("optimizer.unet_lr", None) == "unset"
    assert format_param("network.train_unet", False) == "false"
    assert format_param("optimizer.extra_args", (("foo", 1), ("bar", True))) == "foo=1, bar=true"
    assert format_param("optimizer.extra_args", ()) == "none"
    assert format_param("sampling.prompts", "a cat\n\n# x\n") == "a cat / # x"


def test_the_table_summarises_time_memory_buckets_and_loss(tmp_path):
    records = [load_run(write_run(tmp_path, "r512", make_config("a", 512), wall=10.0, steps=4, buckets=2,
                                  batches=4, peak=3000.0, reserved=3300.0,
                                  phases={"caching": {"allocated_mb": 3000.0, "reserved_mb": 3300.0},
                                          "training": {"allocated_mb": 2500.0, "reserved_mb": 2900.0}})),
               load_run(write_run(tmp_path, "r768", make_config("b", 768), wall=30.0, steps=4, buckets=5,
                                  batches=6, peak=5000.0))]  # an older run: no peaks by phase
    table = comparison_table(records)
    assert table.columns == ["run", "dataset.resolution", "status", "steps", "epochs", "wall time",
                             "time per step (s)", "training peak VRAM allocated (MB)",
                             "training peak VRAM reserved (MB)", "peak VRAM (MB)", "resolution", "buckets",
                             "batches/epoch", "final loss", "last-epoch loss"]
    assert table.varied == ["dataset.resolution"]
    assert table.rows[0] == ["resolution=512", "512x512", "completed", 4, 1, 10.0, 2.5, 2500.0, 2900.0, 3000.0,
                             "512x512", 2, 4, 0.25, 0.52]
    assert table.rows[1][6] == 7.5 and table.rows[1][7:10] == [None, None, 5000.0] and table.rows[1][11] == 5


def test_the_memory_column_says_what_was_measured(tmp_path):
    cpu = _runs(tmp_path / "cpu", make_config(), kind="rss")
    gpu = _runs(tmp_path / "gpu", make_config(), kind="cuda")
    assert {"peak RAM (MB)", "training peak RAM (MB)"} <= set(comparison_table(cpu).columns)
    assert "training peak VRAM reserved (MB)" not in comparison_table(cpu).columns  # a CPU reserves nothing
    assert {"peak VRAM (MB)", "training peak VRAM allocated (MB)", "training peak VRAM reserved (MB)"} <= \
        set(comparison_table(gpu).columns)
    assert {"peak memory (MB)", "training peak memory (MB)"} <= set(comparison_table(cpu + gpu).columns)


def test_a_cpu_runs_training_peak_is_its_rss_and_it_has_no_reserved_figure(tmp_path):
    cpu = load_run(write_run(tmp_path, "cpu", make_config("a"), kind="rss", peak=900.0,
                             phases={"training": {"rss_mb": 800.0}}))
    gpu = load_run(write_run(tmp_path, "gpu", make_config("b"), kind="cuda", peak=3000.0, reserved=3400.0,
                             phases={"training": {"allocated_mb": 2000.0, "reserved_mb": 2400.0}}))
    table = comparison_table([cpu, gpu])
    used, reserved = (table.columns.index(c) for c in ("training peak memory (MB)", "training peak VRAM reserved (MB)"))
    assert [(row[used], row[reserved]) for row in table.rows] == [(800.0, None), (2000.0, 2400.0)]


def test_unknown_numbers_are_blank_not_zero(tmp_path):
    record = load_run(write_run(tmp_path, "r", status=None, metrics=[]))
    row = comparison_table([record]).rows[0]
    columns = comparison_table([record]).columns
    assert row[columns.index("wall time")] is None and row[columns.index("final loss")] is None
    assert row[columns.index("status")] == "incomplete"


def _two_run_table(tmp_path):
    return comparison_table([load_run(write_run(tmp_path, "a", make_config("a", 512), wall=3725.0)),
                             load_run(write_run(tmp_path, "b", make_config("b", 768), wall=45.0))])


def test_csv_keeps_numbers_as_numbers_and_seconds_in_the_header(tmp_path):
    rows = list(csv.reader(io.StringIO(table_to_csv(_two_run_table(tmp_path)))))
    header = rows[0]
    assert header[header.index("wall time (s)")] == "wall time (s)"
    first = dict(zip(header, rows[1]))
    assert float(first["wall time (s)"]) == 3725.0
    assert float(first["time per step (s)"]) == 3725.0 / 4
    assert first["dataset.resolution"] == "512x512" and first["buckets"] == "2"
    assert float(first["final loss"]) == 0.25


def test_markdown_and_text_tables_read_well(tmp_path):
    table = _two_run_table(tmp_path)
    md = table_to_markdown(table, title="Resolution study")
    lines = md.splitlines()
    assert lines[0] == "# Resolution study"
    assert lines[2].startswith("| run | dataset.resolution | status |")
    assert lines[3].startswith("|---|---|---|---:|")  # text left, numbers right
    assert "| 1:02:05 |" in lines[4] and "| 0:45 |" in lines[5]
    text = table_to_text(table).splitlines()
    assert text[0].startswith("run") and set(text[1]) <= {"-", " "}
    steps_end = text[0].index("steps") + len("steps")
    assert all(line[steps_end - 1] == "4" for line in text[2:])  # right-aligned under the header


def test_markdown_escapes_pipes(tmp_path):
    first, second = make_config("a"), make_config("b")
    second.output.comment = "a | b"
    md = table_to_markdown(comparison_table(_runs(tmp_path, first, second)))
    assert "a \\| b" in md


def test_export_writes_tables_and_plots_in_run_colours(tmp_path):
    metrics = [step_record(s, 1 / s, dlr={"unet": 1e-3 * s}) for s in range(1, 6)]
    metrics.append({"type": "epoch", "epoch": 1, "step": 5, "mean_loss": 0.4})
    records = [load_run(write_run(tmp_path / "runs", "a", make_config("a", 512), steps=5)),
               load_run(write_run(tmp_path / "runs", "b", make_config("b", 768), steps=5, metrics=metrics))]
    written = export_comparison(records, tmp_path / "out" / "study")
    names = [p.name for p in written]
    assert names == ["comparison.csv", "comparison.md", "loss_by_step.png", "loss_by_epoch.png", "lr_by_step.png",
                     "dlr_by_step.png", "memory_by_step.png"]
    for path in written[2:]:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        for colour in RUN_COLOURS[:2] if path.name != "dlr_by_step.png" else RUN_COLOURS[1:2]:
            assert np.all(pixels == ImageColor.getrgb(colour), axis=-1).sum() > 40, (path.name, colour)
    md = (tmp_path / "out" / "study" / "comparison.md").read_text()
    assert "`dataset.resolution`" in md and str(records[0].path) in md and "![loss by step](loss_by_step.png)" in md
    assert "resolution=512" in (tmp_path / "out" / "study" / "comparison.csv").read_text()


def test_export_leaves_out_dlr_when_no_run_has_it_and_lists_problems(tmp_path):
    records = [load_run(write_run(tmp_path / "runs", "a", make_config("a", 512))),
               load_run(write_run(tmp_path / "runs", "b", make_config("b", 768), status=None))]
    names = [p.name for p in export_comparison(records, tmp_path / "out")]
    assert "dlr_by_step.png" not in names and "lr_by_step.png" in names
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "incomplete; summary.json is missing" in md


def _damage_metrics(run, *, torn: bool = True) -> None:
    """An invalid byte in the middle of the metrics file and, optionally, a last line cut
    inside a multi-byte character (a non-ASCII prompt)."""
    path = run / "metrics.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines.insert(2, b'{"type": "step", "step": 2, "prompt": "\xff"}')
    data = b"\n".join(lines)
    if torn:
        data += '{"type": "sample", "prompt": "画像"}'.encode()[:-4]
    path.write_bytes(data)


def test_export_reads_past_damaged_metrics_and_names_them(tmp_path):
    records = [load_run(write_run(tmp_path / "runs", "a", make_config("a", 512))),
               load_run(write_run(tmp_path / "runs", "b", make_config("b", 768)))]
    _damage_metrics(records[1].path)
    names = [p.name for p in export_comparison(records, tmp_path / "out")]
    assert "loss_by_step.png" in names
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert ("(completed; metrics.jsonl: 1 damaged line was skipped (the first is line 3); "
            "the other records are shown)") in md
    assert md.count("damaged line") == 1


def test_the_curves_full_count_replaces_the_lists_partial_one(tmp_path):
    from core.system.processes import this_process

    run = write_run(tmp_path / "runs", "a", make_config("a", 512), steps=4)
    _damage_metrics(run)
    with open(run / "metrics.jsonl", "r+b") as handle:  # a second damaged line, at the very end
        handle.truncate(handle.seek(0, 2) - len('{"type": "sample", "prompt": "画像"}'.encode()) + 4)
        handle.write(b"\x00\xff\n")
    summary = (run / "summary.json").read_text().replace('"completed"', '"running"')
    (run / "summary.json").write_text(summary.replace('"runner": null', f'"runner": {{"pid": -1, "host": '
                                                                       f'"{this_process()["host"]}", "started": 0}}'))
    record = load_run(run)
    assert record.status == "running" and "2 damaged lines were skipped near the end" in record.problem
    export_comparison([record], tmp_path / "out")
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "metrics.jsonl: 2 damaged lines were skipped (the first is line 3)" in md
    assert "near the end" not in md


def test_a_table_of_runs_with_absurd_summaries_still_reads(tmp_path):
    import json

    records = []
    for i, value in enumerate([10**400, -1, 1e308, "x", [1], {"a": None}]):
        run = write_run(tmp_path / "runs", f"r{i}", make_config(f"r{i}", 512 + 64 * i))
        summary = json.loads((run / "summary.json").read_text())
        summary.update({key: value for key in ("steps", "wall_seconds", "peak_vram_mb", "final_loss",
                                               "mean_last_epoch_loss", "epochs", "started_at")})
        summary.update(lora_path="z" * 300, memory_kind=value if i % 2 else "cuda")
        (run / "summary.json").write_text(json.dumps(summary))
        records.append(load_run(run))
    assert all(r.problem is None for r in records)
    table = comparison_table(records)
    for render in (table_to_text, table_to_csv, table_to_markdown):
        assert render(table).count("\n") >= len(records)
    assert export_comparison(records, tmp_path / "out")


def test_the_vram_forecast_stands_beside_the_measured_peak_with_their_ratio(tmp_path):
    records = [load_run(write_run(tmp_path, "r512", make_config("a", 512), peak=2500.0,
                                  forecast=forecast_of(2000.0))),
               load_run(write_run(tmp_path, "r768", make_config("b", 768), peak=3000.0, forecast={"error": "boom"})),
               load_run(write_run(tmp_path, "r1024", make_config("c", 1024), peak=4000.0))]  # an older run
    table = comparison_table(records)
    peak = table.columns.index("peak VRAM (MB)")
    assert table.columns[peak:peak + 3] == ["peak VRAM (MB)", "VRAM forecast (MB)", "measured / forecast"]
    assert [row[peak:peak + 3] for row in table.rows] == [[2500.0, 2000.0, 1.25], [3000.0, None, None],
                                                          [4000.0, None, None]]
    assert "1.25×" in table_to_text(table) and "2000" in table_to_text(table)
    first = dict(zip(*list(csv.reader(io.StringIO(table_to_csv(table))))[:2]))
    assert (first["VRAM forecast (MB)"], first["measured / forecast"]) == ("2000.0", "1.25")


def test_a_measured_ram_peak_gets_no_ratio_to_a_forecast(tmp_path):
    cpu = load_run(write_run(tmp_path, "cpu", make_config("a"), kind="rss", peak=900.0, forecast=forecast_of(600.0)))
    gpu = load_run(write_run(tmp_path, "gpu", make_config("b"), kind="cuda", peak=900.0, forecast=forecast_of(600.0)))
    table = comparison_table([cpu, gpu])
    ratio = table.columns.index("measured / forecast")
    assert [row[ratio] for row in table.rows] == [None, 1.5]
    assert "peak memory (MB)" in table.columns  # the measured column says it mixes RAM and VRAM


def test_runs_without_forecasts_have_no_forecast_columns(tmp_path):
    table = comparison_table(_runs(tmp_path, make_config("a", 512), make_config("b", 768), kind="rss"))
    assert "VRAM forecast (MB)" not in table.columns and "measured / forecast" not in table.columns


def test_the_report_says_why_a_run_has_no_forecast(tmp_path):
    records = [load_run(write_run(tmp_path, "a", make_config("a"), forecast={"error": "OSError: no unet config"}))]
    export_comparison(records, tmp_path / "out")
    assert "no VRAM forecast: OSError: no unet config" in (tmp_path / "out" / "comparison.md").read_text()
