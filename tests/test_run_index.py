"""The runs library: reading run folders (whole, broken, running) and their curves."""

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from core.config.schema import DEMO_MODEL, Duration, OptimizerType, SubsetParams, TrainConfig
from core.config.presets import dumps_preset
from core.studies.run_index import discover_runs, forecast_ratio, is_run_dir, load_run, load_series
from core.training.run_folder import RunSummary


def make_config(name: str = "cat", resolution: int = 512, dim: int = 8) -> TrainConfig:
    config = TrainConfig()
    config.model.base_model = DEMO_MODEL
    config.dataset.subsets = [SubsetParams(image_dir="/data/cat", num_repeats=2)]
    config.dataset.resolution = (resolution, resolution)
    config.network.dim = dim
    config.optimizer.type = OptimizerType.ADAMW
    config.training.duration, config.training.max_train_steps = Duration.STEPS, 4
    config.output.output_name = name
    return config


def step_record(step: int, loss: float | None = 0.5, *, lr: float = 1e-4, memory: float = 100.0,
                kind: str = "cuda", dlr: dict | None = None) -> dict:
    return {"type": "step", "step": step, "epoch": 1, "loss": loss, "avg_loss": loss,
            "lr": {"unet": lr, "text_encoder": lr / 2}, "dlr": dlr or {}, "memory_allocated_mb": memory - 10,
            "memory_reserved_mb": memory, "memory_peak_mb": memory + 5, "memory_kind": kind,
            "it_per_s": 2.0, "images_per_s": 4.0, "eta_s": 1.0, "elapsed_s": step * 0.5}


def write_run(root: Path, folder: str, config: TrainConfig | None = None, *, status: str | None = "completed",
              steps: int = 4, metrics: list[dict] | None = None, wall: float = 2.0, peak: float = 1234.0,
              kind: str = "cuda", started: float = 1_700_000_000.0, buckets: int = 2, batches: int = 4,
              phases: dict | None = None, reserved: float | None = None, forecast: dict | None = None) -> Path:
    """A run folder as the engine writes it, by hand (no training needed)."""
    run = root / folder
    run.mkdir(parents=True)
    config = config or make_config()
    (run / "config.toml").write_text(dumps_preset(config, sparse=False))
    plan = {"buckets": [{"resolution": [512, 512 + 64 * i], "count": 3} for i in range(buckets)],
            "images": [{"path": f"img{i}.png"} for i in range(5)], "skipped": [],
            "batches_per_epoch": batches, "epochs": 1, "max_train_steps": steps, "warnings": []}
    (run / "plan.json").write_text(json.dumps(plan))
    if metrics is None:
        metrics = [step_record(s, 1.0 / s, memory=100.0 + s, kind=kind) for s in range(1, steps + 1)]
        metrics.append({"type": "epoch", "epoch": 1, "step": steps, "mean_loss": 0.52})
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if status is not None:
        name = config.output.output_name
        (run / f"{name}.safetensors").write_bytes(b"lora")
        RunSummary(status=status, name=name, steps=steps, total_steps=steps, epochs=1, total_epochs=1,
                   wall_seconds=wall, peak_vram_mb=peak, memory_kind=kind, final_loss=0.25,
                   mean_last_epoch_loss=0.52, lora_path=str(run / f"{name}.safetensors"),
                   started_at=started, peak_by_phase=phases, peak_reserved_mb=reserved,
                   vram_forecast=forecast).write(run)
    return run


def test_a_finished_run_reads_its_config_summary_and_plan(tmp_path):
    record = load_run(write_run(tmp_path, "20240101-120000-cat", make_config(resolution=768)))
    assert record.problem is None
    assert (record.name, record.folder, record.status) == ("cat", "20240101-120000-cat", "completed")
    assert (record.steps, record.total_steps, record.epochs, record.total_epochs) == (4, 4, 1, 1)
    assert (record.wall_seconds, record.peak_memory_mb, record.memory_kind) == (2.0, 1234.0, "cuda")
    assert (record.final_loss, record.last_epoch_loss) == (0.25, 0.52)
    assert (record.resolution, record.bucket_count, record.batches_per_epoch, record.images) == ("768x768", 2, 4, 5)
    assert record.lora_path == record.path / "cat.safetensors"
    assert record.started_at == 1_700_000_000.0


def test_params_are_flat_group_field_keys_with_enum_values(tmp_path):
    record = load_run(write_run(tmp_path, "r", make_config(dim=16)))
    params = record.params
    assert params["network.dim"] == 16
    assert params["dataset.resolution"] == (512, 512)
    assert params["optimizer.type"] == "AdamW" and type(params["optimizer.type"]) is str
    assert params["dataset.subsets[0].image_dir"] == "/data/cat"
    assert params["dataset.subsets[0].num_repeats"] == 2
    assert params["optimizer.unet_lr"] is None  # unset in the TOML: read back as None
    assert params["optimizer.extra_args"] == ()


def test_checkpoints_are_in_training_order_and_samples_by_name(tmp_path):
    run = write_run(tmp_path, "r", steps=40)
    (run / "checkpoints").mkdir()
    # 40 steps in one epoch: the epoch-1 checkpoint (step 40) comes after the step-20 one.
    for name in ("cat-000001.safetensors", "cat-step00000020.safetensors", "cat-step00000010.safetensors"):
        (run / "checkpoints" / name).write_bytes(b"x")
    (run / "samples").mkdir()
    for name in ("cat_s000020_e0001_00.png", "cat_s000010_e0001_00.png", "notes.txt"):
        (run / "samples" / name).write_bytes(b"x")
    record = load_run(run)
    assert [p.name for p in record.checkpoints] == [
        "cat-step00000010.safetensors", "cat-step00000020.safetensors", "cat-000001.safetensors"]
    assert [p.name for p in record.samples] == ["cat_s000010_e0001_00.png", "cat_s000020_e0001_00.png"]


def test_a_moved_run_finds_its_lora_beside_the_summary(tmp_path):
    run = write_run(tmp_path, "r")
    moved = run.rename(tmp_path / "elsewhere")
    assert load_run(moved).lora_path == moved / "cat.safetensors"


def test_a_run_without_summary_is_incomplete_with_progress_from_its_metrics(tmp_path):
    run = write_run(tmp_path, "20240102-080000-cat", status=None, steps=3)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "step", "step": 4, "lo')  # torn by a crash
    record = load_run(run)
    assert record.status == "incomplete"
    assert "summary.json is missing" in record.problem
    assert (record.steps, record.total_steps) == (3, 3)
    assert record.final_loss == pytest.approx(1 / 3)
    assert record.peak_memory_mb == 108.0 and record.wall_seconds == 1.5
    assert record.last_epoch_loss == 0.52
    assert record.lora_path is None
    assert record.started_at is not None  # from the folder's time stamp


def test_a_running_run_shows_its_progress(tmp_path):
    run = write_run(tmp_path, "r", steps=5)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="running", steps=0, wall_seconds=0.0, final_loss=None, peak_vram_mb=0.0)
    (run / "summary.json").write_text(json.dumps(summary))
    record = load_run(run)
    assert record.status == "running" and record.problem is None
    assert record.steps == 5 and record.final_loss == pytest.approx(0.2)


def _mark_running(run: Path, runner: dict | None) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status="running", runner=runner)
    (run / "summary.json").write_text(json.dumps(summary))


def _ended_process_stamp() -> dict:
    import subprocess
    import sys

    from core.system.processes import this_process

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return {"pid": ended.pid, "host": this_process()["host"], "started": 0.0}


@pytest.mark.parametrize("state_file", ["step-00000003.pt", "step-00000003.safetensors"])
def test_a_killed_run_with_a_saved_state_is_interrupted_and_resumable(tmp_path, state_file):
    run = write_run(tmp_path, "killed", steps=5)
    _mark_running(run, _ended_process_stamp())
    (run / "state").mkdir()
    (run / "state" / state_file).write_bytes(b"state")
    record = load_run(run)
    assert record.status == "interrupted" and record.steps == 5
    assert f'lorakiln train --resume "{run}"' in record.problem
    assert "from the state saved at step 3" in record.problem


def test_a_killed_run_without_a_saved_state_is_not_advised_to_resume(tmp_path):
    run = write_run(tmp_path, "killed", steps=5)
    _mark_running(run, _ended_process_stamp())
    (run / "state").mkdir()  # made, but the process died before its first save
    (run / "state" / ".step-00000003.pt.a1b2c3d4.tmp").write_bytes(b"half")  # an unfinished save
    record = load_run(run)
    assert record.status == "interrupted"
    assert "--resume" not in record.problem and "cannot be resumed" in record.problem
    assert f'lorakiln train "{run / "config.toml"}"' in record.problem


def test_a_killed_run_without_state_or_settings_says_it_cannot_be_continued(tmp_path):
    run = write_run(tmp_path, "killed", steps=5)
    _mark_running(run, _ended_process_stamp())
    (run / "config.toml").write_text("[network\n")
    record = load_run(run)
    assert record.status == "interrupted" and "--resume" not in record.problem
    assert "its settings cannot be read" in record.problem and "config.toml" in record.problem


def test_a_run_whose_process_lives_or_is_unknown_stays_running(tmp_path):
    from core.system.processes import this_process

    alive = write_run(tmp_path, "alive")
    _mark_running(alive, this_process())
    elsewhere = write_run(tmp_path, "elsewhere")
    _mark_running(elsewhere, {"pid": 1, "host": "another-machine", "started": 0.0})
    older = write_run(tmp_path, "older")
    _mark_running(older, None)  # written before runs carried their process
    assert [load_run(r).status for r in (alive, elsewhere, older)] == ["running"] * 3


def test_a_failed_run_carries_its_error_and_skipped_steps(tmp_path):
    run = write_run(tmp_path, "r", status="failed")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(error="out of GPU memory", skipped_steps=3)
    (run / "summary.json").write_text(json.dumps(summary))
    record = load_run(run)
    assert (record.status, record.error, record.skipped_steps) == ("failed", "out of GPU memory", 3)
    del summary["skipped_steps"]  # written by older versions without it
    (run / "summary.json").write_text(json.dumps(summary))
    assert load_run(run).skipped_steps == 0


def test_a_broken_config_names_the_file_and_keeps_the_summary(tmp_path):
    run = write_run(tmp_path, "r")
    (run / "config.toml").write_text("[network\ndim = ")
    record = load_run(run)
    assert record.config is None and record.params == {}
    assert "config.toml" in record.problem and "not valid TOML" in record.problem
    assert record.status == "completed" and record.steps == 4
    assert record.name == "r"


def test_a_run_without_config_is_listed_with_its_summary(tmp_path):
    run = write_run(tmp_path, "r")
    (run / "config.toml").unlink()
    assert is_run_dir(run)
    record = load_run(run)
    assert record.config is None and "config.toml is missing" in record.problem
    assert record.status == "completed" and record.resolution is None and record.bucket_count == 2


def test_an_unreadable_summary_is_named(tmp_path):
    run = write_run(tmp_path, "r")
    (run / "summary.json").write_text("{not json")
    record = load_run(run)
    assert record.status == "incomplete"
    assert "summary.json is not valid JSON" in record.problem
    assert record.config is not None


def test_what_counts_as_a_run_folder(tmp_path):
    assert is_run_dir(write_run(tmp_path, "run"))
    lone = tmp_path / "preset_only"
    lone.mkdir()
    (lone / "config.toml").write_text(dumps_preset(make_config()))
    assert not is_run_dir(lone)  # anyone's preset folder
    assert not is_run_dir(tmp_path / "missing")
    assert not is_run_dir(tmp_path / "run" / "summary.json")


def test_discover_lists_runs_newest_first_once_each(tmp_path):
    write_run(tmp_path / "out", "old", started=1_000.0)
    new = write_run(tmp_path / "out", "new", started=2_000.0)
    (tmp_path / "out" / "not_a_run").mkdir()
    records = discover_runs([tmp_path / "out", new, tmp_path / "missing"])
    assert [r.folder for r in records] == ["new", "old"]
    assert discover_runs([tmp_path / "missing"]) == []
    assert [r.folder for r in discover_runs([new])] == ["new"]  # a run folder itself


def test_runs_from_before_the_group_rename_show_their_text_encoder_curves_under_todays_name(tmp_path):
    old = [step_record(i, dlr={"unet": 1.0, "textencoder": 2.0}) for i in (1, 2)]
    for record in old:
        record["lr"] = {"unet": 1e-4, "textencoder": 5e-5}
    series = load_series(write_run(tmp_path, "r", metrics=old, steps=2))
    assert set(series.lr) == set(series.dlr) == {"unet", "text_encoder"}
    assert series.lr["text_encoder"][1].tolist() == [5e-5] * 2 and series.dlr["text_encoder"][1].tolist() == [2.0] * 2


def test_series_reads_steps_losses_lr_memory_and_epochs(tmp_path):
    metrics = [step_record(1, 0.9, memory=100), step_record(2, None, memory=110), step_record(3, 0.7, memory=120),
               {"type": "epoch", "epoch": 1, "step": 3, "mean_loss": 0.8},
               {"type": "checkpoint", "path": "x", "step": 3, "epoch": 1, "kind": "epoch"}]
    series = load_series(write_run(tmp_path, "r", metrics=metrics, steps=3))
    assert series.step.tolist() == [1, 2, 3]
    assert series.loss[0] == 0.9 and math.isnan(series.loss[1]) and series.loss[2] == 0.7
    assert series.lr["unet"][1].tolist() == [1e-4] * 3 and series.lr["text_encoder"][1].tolist() == [5e-5] * 3
    assert series.dlr == {}
    assert series.memory[1].tolist() == [100, 110, 120] and series.memory_kind == "cuda"
    assert series.epoch.tolist() == [1] and series.epoch_end_step.tolist() == [3]
    assert series.epoch_loss.tolist() == [0.8]


def test_series_of_a_resumed_run_keeps_the_later_record_of_each_step(tmp_path):
    metrics = [step_record(s, 1.0) for s in (1, 2, 3)] + [step_record(s, 0.5, dlr={"unet": 1e-3})
                                                            for s in (3, 4)]
    series = load_series(write_run(tmp_path, "r", metrics=metrics))
    assert series.step.tolist() == [1, 2, 3, 4]
    assert series.loss.tolist() == [1.0, 1.0, 0.5, 0.5]
    steps, values = series.dlr["unet"]
    assert steps.tolist() == [3, 4] and values.tolist() == [1e-3, 1e-3]


def test_series_ignores_a_torn_last_line_and_a_missing_file(tmp_path):
    run = write_run(tmp_path, "r", steps=2)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "step", "step": 3, "loss": 0.1')
    assert load_series(run).step.tolist() == [1, 2]
    (run / "metrics.jsonl").unlink()
    empty = load_series(run)
    assert empty.step.size == 0 and empty.loss.size == 0 and empty.lr == {} and empty.epoch.size == 0


# ---------------------------------------------------------------- damaged runs


def _edit_summary(run: Path, **changes) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(changes)
    (run / "summary.json").write_text(json.dumps(summary))


def test_a_running_run_with_pid_minus_one_is_listed_beside_the_others(tmp_path):
    import socket

    good = write_run(tmp_path / "out", "good", started=2_000.0)
    odd = write_run(tmp_path / "out", "odd", started=1_000.0)
    _mark_running(odd, {"pid": -1, "host": socket.gethostname(), "started": 0.0})
    records = discover_runs([tmp_path / "out"])
    assert [(r.folder, r.status) for r in records] == [("good", "completed"), ("odd", "running")]
    assert records[0].problem is None and records[0].path == good


def test_a_lora_path_too_long_for_the_file_system_is_not_fatal(tmp_path):
    run = write_run(tmp_path, "r")
    _edit_summary(run, lora_path="/models/" + "x" * 300 + ".safetensors")  # a name over 255 bytes
    record = load_run(run)
    assert record.problem is None and record.status == "completed"
    assert record.lora_path == run / "cat.safetensors"  # found under the run's own name instead
    (run / "cat.safetensors").unlink()
    assert load_run(run).lora_path is None


@pytest.mark.parametrize("lora_path", ["a\x00b.safetensors", "x" * 300, "/" + "y/" * 3000, ".", "", 5, None,
                                       ["a"], {"p": 1}], ids=lambda value: repr(value)[:24])
def test_a_lora_path_of_any_shape_is_read_or_left_out(tmp_path, lora_path):
    run = write_run(tmp_path, "r")
    (run / "cat.safetensors").unlink()
    _edit_summary(run, lora_path=lora_path)
    record = load_run(run)
    assert record.lora_path is None and record.problem is None


@pytest.mark.parametrize("value", [-1, -(10**30), 10**400, 1e308, "12", None, True, [4], {"n": 4}],
                         ids=lambda value: repr(value)[:24])
def test_summary_numbers_of_the_wrong_type_or_size_read_as_unknown(tmp_path, value):
    run = write_run(tmp_path, "r")
    summary = json.loads((run / "summary.json").read_text())
    for key in ("steps", "total_steps", "epochs", "total_epochs", "skipped_steps", "wall_seconds",
                "peak_vram_mb", "final_loss", "mean_last_epoch_loss", "started_at"):
        summary[key] = value
    (run / "summary.json").write_text(json.dumps(summary).replace("1e+308", "1e999"))  # JSON's infinity
    record = load_run(run)
    assert record.problem is None and record.status == "completed"
    for count in (record.steps, record.epochs, record.skipped_steps):
        assert isinstance(count, int) and 0 <= count < 2**63
    assert record.wall_seconds is None or math.isfinite(record.wall_seconds)
    assert record.started_at is None or time.localtime(record.started_at)


def test_a_summary_of_the_wrong_shape_names_the_file(tmp_path):
    run = write_run(tmp_path, "r")
    for text in ("[1, 2]", '"completed"', "null", "1e999"):
        (run / "summary.json").write_text(text)
        record = load_run(run)
        assert record.status == "incomplete" and "summary.json" in record.problem


def test_a_summary_nested_too_deeply_to_read_is_named(tmp_path):
    run = write_run(tmp_path, "r")
    (run / "summary.json").write_text("[" * 200_000 + "]" * 200_000)
    record = load_run(run)
    assert record.status == "incomplete" and "summary.json" in record.problem and "nested" in record.problem


def test_a_folder_under_an_unknown_user_is_no_runs_not_an_error():
    assert discover_runs([Path("~no-such-user-of-lorakiln/runs")]) == []


def test_an_interrupted_run_reads_its_progress_past_damaged_metrics_and_says_so(tmp_path):
    metrics = [step_record(s) for s in (1, 2, 3)]
    run = write_run(tmp_path, "r", metrics=metrics)
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b'{"type": "step", "step": 4, "prompt": "\xff"}\n')  # a flipped byte
        handle.write(json.dumps(step_record(5)).encode() + b"\n")
        handle.write('{"type": "step", "step": 6, "prompt": "画'.encode()[:-1])  # cut inside a character
    _mark_running(run, _ended_process_stamp())
    _edit_summary(run, steps=0, final_loss=None)
    record = load_run(run)
    assert record.status == "interrupted" and record.steps == 5
    assert "1 damaged line was skipped near the end of metrics.jsonl" in record.problem
    assert record.metrics_note in record.problem


def test_series_skip_and_count_damaged_lines(tmp_path):
    run = write_run(tmp_path, "r", steps=2)
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b'{"type": "step", "step": 3, "loss": 0.1, "prompt": "\xe7\x94"}\n')
        handle.write(b"7\n")
        handle.write(json.dumps(step_record(4, 0.4)).encode() + b"\n")
        handle.write('{"type": "step", "step": 5, "prompt": "画'.encode()[:-2])
    series = load_series(run)
    assert series.step.tolist() == [1, 2, 4] and series.loss[-1] == 0.4
    assert series.damaged_lines == 2
    assert series.note == ("metrics.jsonl: 2 damaged lines were skipped (the first is line 4); "
                           "the other records are shown")
    assert load_series(write_run(tmp_path, "clean")).note is None


@pytest.mark.parametrize("record", [
    {"type": "step", "step": 2**70, "loss": 0.1}, {"type": "step", "step": -3}, {"type": "step", "step": True},
    {"type": "step", "step": 9, "loss": 10**400, "lr": "fast", "dlr": [1, 2], "memory_kind": ["cuda"]},
    {"type": "step", "step": 9, "lr": {"unet": "1e-4", "te": [1]}, "dlr": {"unet": None}, "memory_reserved_mb": {}},
    {"type": "epoch", "epoch": 10**30, "step": 1}, {"type": "epoch", "epoch": 2, "step": 2**80, "mean_loss": "x"},
    {"type": ["step"], "step": 1}, {"type": None}, {},
], ids=lambda value: json.dumps(value)[:40])
def test_series_leave_out_values_of_the_wrong_type_or_size(tmp_path, record):
    metrics = [step_record(1, 0.5), record, step_record(10, 0.25)]
    series = load_series(write_run(tmp_path, "r", metrics=metrics))
    assert series.step[0] == 1 and series.step[-1] == 10 and series.loss[-1] == 0.25
    assert series.lr["unet"][0].tolist()[-1] == 10 and series.memory_kind == "cuda"
    assert series.damaged_lines == 0 and series.note is None


def test_an_unreadable_metrics_file_gives_empty_curves_with_a_note(tmp_path):
    run = write_run(tmp_path, "r")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()  # read as a file, it fails like an unreadable one
    series = load_series(run)
    assert series.step.size == 0 and "metrics.jsonl cannot be read" in series.note


@pytest.mark.slow
def test_runs_trained_by_the_engine_are_read_back(tmp_path):
    from core.training.engine import Trainer
    from core.training.events import Finished, ListSink
    from tests.engine_fixtures import tiny_config

    for dim in (2, 4):
        config = tiny_config(tmp_path / f"d{dim}", steps=3)
        config.network.dim = dim
        config.output.output_dir = str(tmp_path / "runs")
        result = Trainer(config, ListSink()).run()
        assert isinstance(result, Finished), getattr(result, "traceback", "")
    records = discover_runs([tmp_path / "runs"])
    assert len(records) == 2 and all(r.problem is None and r.status == "completed" for r in records)
    assert sorted(r.params["network.dim"] for r in records) == [2, 4]
    for record in records:
        assert record.steps == 3 and record.memory_kind == "rss" and record.peak_memory_mb > 0
        assert record.lora_path is not None and record.lora_path.is_file()
        assert record.bucket_count and record.batches_per_epoch and record.images == 5
        series = load_series(record.path)
        assert series.step.tolist() == [1, 2, 3] and np.isfinite(series.loss).all()
        # 3 steps of a 5-batch epoch: max steps cut the epoch short, so it has no epoch loss.
        assert set(series.lr) == {"unet", "text_encoder"} and series.epoch.size == 0
    from core.studies.compare import varied_params

    varied = varied_params(records)
    assert "network.dim" in varied and "output.output_name" not in varied


def test_the_training_peaks_are_read_from_the_summary_and_older_runs_have_none(tmp_path):
    record = load_run(write_run(tmp_path, "new", peak=3000.0, reserved=3300.0,
                                phases={"training": {"allocated_mb": 2500.0, "reserved_mb": 2900.0}}))
    assert (record.training_peak_mb, record.training_peak_reserved_mb, record.peak_reserved_mb) == \
        (2500.0, 2900.0, 3300.0)
    assert record.peak_memory_mb == 3000.0
    old = load_run(write_run(tmp_path, "old"))
    assert (old.training_peak_mb, old.training_peak_reserved_mb, old.peak_reserved_mb, old.problem) == \
        (None, None, None, None)
    cpu = load_run(write_run(tmp_path, "cpu", kind="rss", reserved=5.0, phases={"training": {"rss_mb": 700.0}}))
    assert (cpu.training_peak_mb, cpu.training_peak_reserved_mb, cpu.peak_reserved_mb) == (700.0, None, None)


@pytest.mark.parametrize("phases", ["big", [1, 2], {"training": "big"}, {"training": [1]},
                                    {"training": {"allocated_mb": "big", "reserved_mb": None}},
                                    {"training": {"allocated_mb": float("inf")}}, {"training": {"allocated_mb": True}},
                                    {"training": {"allocated_mb": 10**400}}])
def test_peaks_by_phase_of_the_wrong_type_read_as_absent(tmp_path, phases):
    run = write_run(tmp_path, "r")
    summary = json.loads((run / "summary.json").read_text())
    summary.update(peak_by_phase=phases, peak_reserved_mb="lots")
    (run / "summary.json").write_text(json.dumps(summary))
    record = load_run(run)
    assert (record.training_peak_mb, record.training_peak_reserved_mb, record.peak_reserved_mb) == \
        (None, None, None)
    assert record.problem is None and record.peak_memory_mb == 1234.0


def test_a_running_run_shows_the_training_peak_of_its_last_step(tmp_path):
    last = step_record(4, memory=300.0) | {"memory_peak_mb": 280.0, "memory_peak_reserved_mb": 320.0,
                                            "memory_run_peak_mb": 900.0}
    run = write_run(tmp_path, "r", status=None, metrics=[step_record(s) for s in (1, 2, 3)] + [last])
    record = load_run(run)
    assert (record.training_peak_mb, record.training_peak_reserved_mb, record.peak_memory_mb) == \
        (280.0, 320.0, 900.0)
    older = load_run(write_run(tmp_path, "o", status=None, metrics=[step_record(1, memory=300.0)]))
    assert (older.training_peak_mb, older.peak_memory_mb) == (None, 305.0)  # its peak was process-wide


MB = 1024 * 1024


def forecast_of(peak_mb: float, driver_mb: float | None = None) -> dict:
    """summary.vram_forecast as core.training.run_forecast writes it (bytes)."""
    return {"peak": int(peak_mb * MB), "driver": int((driver_mb or peak_mb * 1.3) * MB),
            "training_peak": int(peak_mb * MB), "bucket": [512, 512], "batch_size": 2}


def test_the_vram_forecast_is_read_in_mb_beside_the_measured_peak(tmp_path):
    record = load_run(write_run(tmp_path, "gpu", peak=2500.0, forecast=forecast_of(2000.0, 2600.0)))
    assert (record.forecast_mb, record.forecast_driver_mb, record.forecast_error) == (2000.0, 2600.0, None)
    assert forecast_ratio(record) == 1.25 and record.problem is None
    older = load_run(write_run(tmp_path, "older", peak=2500.0))
    assert (older.forecast_mb, older.forecast_driver_mb, older.forecast_error, forecast_ratio(older)) == \
        (None, None, None, None)


def test_a_forecast_beside_a_measured_ram_peak_gives_no_ratio(tmp_path):
    """A CPU run measures the process's RAM: no ratio to a GPU forecast means anything."""
    record = load_run(write_run(tmp_path, "cpu", kind="rss", peak=2500.0, forecast=forecast_of(2000.0)))
    assert record.forecast_mb == 2000.0 and forecast_ratio(record) is None


def test_a_forecast_that_failed_carries_its_reason_on_one_line(tmp_path):
    record = load_run(write_run(tmp_path, "r", forecast={"error": "OSError: no\nunet config " + "x" * 1000}))
    assert record.forecast_mb is None and forecast_ratio(record) is None
    assert record.forecast_error.startswith("OSError: no unet config x") and len(record.forecast_error) == 300
    assert record.problem is None  # the run itself is fine


@pytest.mark.parametrize("forecast", ["big", [1, 2], 7, {"peak": "big"}, {"peak": -5}, {"peak": 0},
                                      {"peak": True}, {"peak": 10**400}, {"peak": float("nan")},
                                      {"peak": float("inf"), "driver": [1]}, {"error": 7}, {"error": "  "},
                                      {"error": None, "peak": None}])
def test_a_damaged_forecast_reads_as_absent(tmp_path, forecast):
    record = load_run(write_run(tmp_path, "r", forecast=forecast))
    assert (record.forecast_mb, record.forecast_driver_mb, record.forecast_error) == (None, None, None)
    assert forecast_ratio(record) is None and record.problem is None and record.peak_memory_mb == 1234.0
