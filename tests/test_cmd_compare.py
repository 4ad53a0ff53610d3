"""lorakiln compare: the printed table, --json, --out, and the errors."""

import json

from core.cli.main import build_parser, main
from tests.test_run_index import forecast_of, make_config, write_run


def _study(root):
    for i, resolution in enumerate((512, 768, 1024)):
        write_run(root / "runs", f"2024010{i + 1}-120000-cat", make_config(f"cat{resolution}", resolution),
                  started=1000.0 + i, wall=10.0 * (i + 1))
    return root / "runs"


def test_compare_is_a_listed_subcommand():
    assert "compare" in build_parser().format_help()


def test_a_folder_of_runs_prints_the_table_newest_first(capsys, tmp_path):
    assert main(["compare", str(_study(tmp_path))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["run", "dataset.resolution", "status"]
    assert [line.split()[0] for line in out[2:5]] == ["resolution=1024", "resolution=768", "resolution=512"]
    assert "settings that differ: dataset.resolution" in out


def test_run_folders_can_be_named_one_by_one_and_only_once(capsys, tmp_path):
    runs = _study(tmp_path)
    first = runs / "20240101-120000-cat"
    assert main(["compare", str(first), str(runs / "20240102-120000-cat"), str(first)]) == 0
    out = capsys.readouterr().out
    assert out.count("resolution=512") == 1 and "resolution=1024" not in out


def test_json_holds_the_raw_table(capsys, tmp_path):
    assert main(["compare", str(_study(tmp_path)), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["varied"] == ["dataset.resolution"]
    assert doc["columns"][:2] == ["run", "dataset.resolution"]
    wall = doc["columns"].index("wall time")
    assert [row[wall] for row in doc["rows"]] == [30.0, 20.0, 10.0]
    assert len(doc["runs"]) == 3 and doc["problems"] == {} and doc["written"] == []


def test_out_writes_the_export(capsys, tmp_path):
    out_dir = tmp_path / "study"
    assert main(["compare", str(_study(tmp_path)), "--out", str(out_dir)]) == 0
    assert "wrote 6 files" in capsys.readouterr().out
    assert {p.name for p in out_dir.iterdir()} == {"comparison.csv", "comparison.md", "loss_by_step.png",
                                                   "loss_by_epoch.png", "lr_by_step.png", "memory_by_step.png"}


def test_a_broken_run_is_shown_with_a_note(capsys, tmp_path):
    runs = _study(tmp_path)
    (runs / "20240102-120000-cat" / "summary.json").write_text("{")
    assert main(["compare", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "incomplete" in out and "note:" in out and "summary.json is not valid JSON" in out


def test_paths_that_hold_no_runs_are_errors(capsys, tmp_path):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty")]) == 2
    assert "holds no run folders" in capsys.readouterr().err
    (tmp_path / "file.txt").write_text("x")
    assert main(["compare", str(tmp_path / "file.txt")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_one_bad_path_among_good_ones_fails_before_printing(capsys, tmp_path):
    assert main(["compare", str(_study(tmp_path)), str(tmp_path / "typo")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "typo: no such folder" in captured.err


def test_out_must_be_a_folder(capsys, tmp_path):
    runs = _study(tmp_path)
    (tmp_path / "taken").write_text("x")
    assert main(["compare", str(runs), "--out", str(tmp_path / "taken")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "x"


def test_damaged_and_odd_runs_are_listed_beside_the_good_ones(capsys, tmp_path):
    import socket

    runs = _study(tmp_path)
    odd = runs / "20240102-120000-cat"
    summary = json.loads((odd / "summary.json").read_text())
    summary.update(status="running", runner={"pid": -1, "host": socket.gethostname(), "started": 0.0},
                   lora_path="/loras/" + "l" * 300 + ".safetensors")
    (odd / "summary.json").write_text(json.dumps(summary))
    with open(runs / "20240103-120000-cat" / "metrics.jsonl", "ab") as handle:
        handle.write('{"type": "step", "step": 5, "prompt": "ñandú"}'.encode()[:-4])  # cut inside "ú"
    assert main(["compare", str(runs), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 3 and doc["problems"] == {}
    status = doc["columns"].index("status")
    assert [row[status] for row in doc["rows"]] == ["completed", "running", "completed"]


def test_out_notes_the_damaged_metrics_lines_of_a_run(capsys, tmp_path):
    runs = _study(tmp_path)
    damaged = runs / "20240101-120000-cat"
    with open(damaged / "metrics.jsonl", "ab") as handle:
        handle.write(b'{"type": "step", "step": 5, "loss": 0.1, "prompt": "\xe7\x94"}\n')
        handle.write(b'{"type": "step", "step": 6, "loss": 0.1}\n')
    assert main(["compare", str(runs), "--out", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert (f"note: {damaged}: metrics.jsonl: 1 damaged line was skipped (the first is line 6); "
            "the other records are shown") in out
    assert out.count("note:") == 1


def test_a_path_too_long_to_look_at_is_an_error_not_a_crash(capsys, tmp_path):
    assert main(["compare", str(tmp_path / ("x" * 300))]) == 2
    assert "cannot be looked at (File name too long)" in capsys.readouterr().err


def test_the_printed_table_shows_forecast_beside_measured_peak(capsys, tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "20240101-120000-cat", make_config("cat512", 512), peak=2500.0, forecast=forecast_of(2000.0))
    write_run(runs, "20240102-120000-cat", make_config("cat768", 768), forecast={"error": "OSError: no unet config"})
    assert main(["compare", str(runs)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.index("peak VRAM (MB)") < header.index("VRAM forecast (MB)") < header.index("measured / forecast")
    assert "1.25×" in out
    assert "20240102-120000-cat: its VRAM forecast could not be made (OSError: no unet config)" in out
