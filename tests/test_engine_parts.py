"""The engine's plain parts: control, running loss, throughput, ETA, run folders, TensorBoard files."""

import json
import logging
import threading
import time

import pytest

from core.config.schema import TrainConfig
from core.training.run_folder import MetricsWriter, RunSummary, create_run_dir, read_metrics, read_summary, write_config
from core.training.control import Cancelled, Control
from core.training.metrics import (DebiasedEma, EpochWindowAverage, Throughput, eta_seconds, format_duration,
                                   smooth)
from core.training.tensorboard import EventWriter, crc32c


def test_the_running_loss_is_the_mean_of_the_last_epochs_worth_of_steps():
    average = EpochWindowAverage(window=3)
    assert [average.add(v) for v in (3.0, 6.0, 9.0, 12.0)] == [3.0, 4.5, 6.0, 9.0]


def test_the_running_loss_window_shows_its_values_and_the_latest_one():
    average = EpochWindowAverage(window=3)
    assert average.values == [] and average.last is None
    for value in (3.0, 6.0, 9.0, 12.0):
        average.add(value)
    assert average.values == [6.0, 9.0, 12.0] and average.last == 12.0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_throughput_counts_steps_per_second_and_leaves_pauses_out():
    clock = FakeClock()
    rate = Throughput(window=10, clock=clock)
    for _ in range(5):
        rate.mark()
        clock.now += 0.5
    assert rate.steps_per_second == pytest.approx(2.0)
    rate.pause()
    clock.now += 100.0
    rate.resume()
    rate.mark()
    assert rate.steps_per_second == pytest.approx(2.0)


def test_eta_and_its_format():
    assert eta_seconds(100, 400, 2.0) == 150.0
    assert eta_seconds(0, 10, 0.0) is None
    assert format_duration(150) == "02:30" and format_duration(3725) == "1:02:05"
    assert format_duration(None) == "--:--"


def test_smoothing_is_debiased_like_tensorboard():
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert smooth([0.0, 10.0], 0.0) == [0.0, 10.0]
    # by hand: (0.5·2)/0.5, (0.5·1 + 0.5·0)/0.75, (0.5·0.5 + 0.5·4)/0.875
    assert smooth([2.0, 0.0, 4.0], 0.5) == pytest.approx([2.0, 2 / 3, 18 / 7])


def test_a_live_curve_is_smoothed_one_value_at_a_time_to_the_same_numbers():
    ema = DebiasedEma(0.5)
    assert [ema.add(value) for value in (2.0, 0.0, 4.0)] == pytest.approx([2.0, 2 / 3, 18 / 7])


def test_pause_blocks_until_resume_and_stop_releases_a_pause():
    control = Control()
    control.pause()
    assert not control.wait_while_paused(timeout=0.01)
    threading.Timer(0.05, control.resume).start()
    assert control.wait_while_paused(timeout=5)
    control.pause()
    control.request_stop()
    assert control.wait_while_paused(timeout=0.01) and control.stop_requested


def test_save_and_sample_requests_are_taken_once():
    control = Control()
    control.request_save()
    assert control.take_save_request() and not control.take_save_request()
    control.request_sample()
    assert control.take_sample_request() and not control.take_sample_request()


def test_cancel_raises_inside_long_phases():
    control = Control()
    control.raise_if_cancelled()
    control.request_cancel()
    with pytest.raises(Cancelled):
        control.raise_if_cancelled()


def test_run_folders_are_unique_and_hold_the_full_config(tmp_path):
    config = TrainConfig()
    config.output.output_dir = str(tmp_path)
    config.output.output_name = "mylora"
    first, second = create_run_dir(config, when=0), create_run_dir(config, when=0)
    assert first != second and first.name.endswith("-mylora") and second.name.endswith("-mylora-2")
    write_config(first, config)
    text = (first / "config.toml").read_text()
    assert "[logging]" in text and "tensorboard = false" in text  # every field, not sparse


def test_metrics_survive_a_torn_last_line(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"type": "step", "step": 1, "loss": 0.5})
    writer.write({"type": "step", "step": 2, "loss": float("nan")})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"type": "step", "st')  # the process died mid-write
    records = list(read_metrics(tmp_path / "metrics.jsonl"))
    assert records == [{"type": "step", "step": 1, "loss": 0.5}, {"type": "step", "step": 2, "loss": None}]


def test_summary_round_trips(tmp_path):
    RunSummary(status="completed", name="x", steps=10, final_loss=0.1).write(tmp_path)
    assert read_summary(tmp_path)["status"] == "completed"
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 10


def test_crc32c_known_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_tensorboard_reads_our_event_files(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = EventWriter(tmp_path)
    writer.scalars({"loss/current": 0.25, "lr/d*lr/unet": 1e-5}, step=1, wall_time=time.time())
    writer.scalars({"loss/current": 0.125}, step=2)
    writer.close()
    events = accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss/current", "lr/d*lr/unet"}
    assert [(e.step, e.value) for e in events.Scalars("loss/current")] == [(1, 0.25), (2, 0.125)]
    assert events.Scalars("lr/d*lr/unet")[0].value == pytest.approx(1e-5)


def test_the_run_log_starts_with_the_lines_logged_before_the_run_folder_existed(tmp_path):
    from core.training.run_log import RunLog

    run_log, early = RunLog(), logging.getLogger("lorakiln.run")
    run_log.buffer()
    early.info("planning the dataset")
    run_log.open(tmp_path / "log.txt")
    early.info("training")
    run_log.close_file()
    early.info("after the run")
    lines = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(" INFO ")[1] for line in lines] == ["planning the dataset", "training"]
