"""The training engine, end to end on the tiny demo model (CPU, a few seconds per run)."""

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from core.config.schema import OptimizerType
from core.training.run_folder import read_metrics
from core.training.control import Control
from core.training.engine import Trainer
from core.training.events import (CallbackSink, CheckpointSaved, Failed, Finished, ListSink, RunStarted,
                                  StepMetrics)
from core.training.step import StepComputer
from tests.engine_fixtures import tiny_config


def _train(config, control=None, on_event=None, resume_from=None):
    sink = ListSink()

    def emit(event):
        sink.emit(event)
        if on_event:
            on_event(event)

    result = Trainer(config, CallbackSink(emit), control, resume_from=resume_from).run()
    return result, sink


def _losses(sink):
    return [e.loss for e in sink.of(StepMetrics)]


def test_a_run_trains_and_writes_its_folder(tmp_path):
    result, sink = _train(tiny_config(tmp_path))
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    run = Path(result.run_dir)
    assert [e.step for e in sink.of(StepMetrics)] == [1, 2, 3, 4, 5, 6]
    assert {"config.toml", "plan.json", "metrics.jsonl", "summary.json", "log.txt", "tiny.safetensors"} <= \
        {p.name for p in run.iterdir()}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["lora_path"] == str(run / "tiny.safetensors")
    assert summary["wall_seconds"] > 0 and summary["peak_vram_mb"] > 0 and summary["memory_kind"] == "rss"
    assert math.isfinite(summary["final_loss"]) and math.isfinite(summary["mean_last_epoch_loss"])
    steps = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    with safe_open(str(run / "tiny.safetensors"), "pt") as lora:
        keys = list(lora.keys())
        assert lora.metadata()["ss_steps"] == "6"
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_") for k in keys)


def test_step_metrics_carry_lr_memory_speed_and_eta(tmp_path):
    _, sink = _train(tiny_config(tmp_path, steps=3))
    last = sink.of(StepMetrics)[-1]
    assert set(last.lr) == {"unet", "text_encoder"} and last.dlr == {}
    assert last.memory_kind == "rss" and last.memory_peak_mb >= last.memory_allocated_mb > 0
    assert last.it_per_s > 0 and last.images_per_s > 0 and last.eta_s == 0
    started = sink.of(RunStarted)[0]
    assert (started.total_steps, started.batches_per_epoch) == (3, 5)


def test_the_same_seed_gives_the_same_losses(tmp_path):
    first = _losses(_train(tiny_config(tmp_path / "a"))[1])
    second = _losses(_train(tiny_config(tmp_path / "b"))[1])
    assert first == second
    config = tiny_config(tmp_path / "c")
    config.training.seed = 7
    assert _losses(_train(config)[1]) != first


def test_stop_saves_a_usable_lora_and_resume_continues_the_same_curve(tmp_path):
    straight = _losses(_train(tiny_config(tmp_path / "straight", steps=8))[1])
    control = Control()
    config = tiny_config(tmp_path / "split", steps=8)
    stopped, first = _train(config, control,
                            on_event=lambda e: isinstance(e, StepMetrics) and e.step == 3 and control.request_stop())
    assert stopped.reason == "stopped" and stopped.steps == 3
    assert Path(stopped.lora_path).is_file()
    summary = json.loads((Path(stopped.run_dir) / "summary.json").read_text())
    # Stopped 3 steps into a 5-batch epoch: no whole epoch, so no last-epoch loss (the runs
    # table would otherwise set a partial epoch's mean beside other runs' whole ones).
    assert summary["status"] == "stopped" and summary["mean_last_epoch_loss"] is None
    resumed, second = _train(config, resume_from=Path(stopped.run_dir))
    assert resumed.reason == "completed" and resumed.steps == 8
    assert [e.step for e in second.of(StepMetrics)] == [4, 5, 6, 7, 8]
    assert _losses(first) + _losses(second) == pytest.approx(straight, rel=1e-5)
    recorded = [r["step"] for r in read_metrics(Path(stopped.run_dir) / "metrics.jsonl") if r["type"] == "step"]
    assert recorded == [1, 2, 3, 4, 5, 6, 7, 8]  # one curve in the same run folder


def test_pause_holds_until_resumed(tmp_path):
    control = Control()
    seen_while_paused = []

    def on_event(event):
        if isinstance(event, StepMetrics):
            if control.paused:
                seen_while_paused.append(event.step)
            if event.step == 2:
                control.pause()
                threading.Timer(0.6, control.resume).start()

    result, sink = _train(tiny_config(tmp_path), control, on_event)
    assert result.reason == "completed"
    assert seen_while_paused == []
    assert any(e.phase == "paused" for e in sink.events if type(e).__name__ == "Status")


def test_cancel_saves_nothing(tmp_path):
    control = Control()
    result, sink = _train(tiny_config(tmp_path), control,
                          on_event=lambda e: isinstance(e, StepMetrics) and e.step == 2 and control.request_cancel())
    assert result.reason == "cancelled" and result.lora_path is None
    assert not list(Path(result.run_dir).glob("**/*.safetensors"))
    assert sink.of(CheckpointSaved) == []


def test_a_nan_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = StepComputer.loss
    calls = {"n": 0}

    def flaky(self, batch):
        calls["n"] += 1
        loss = real_loss(self, batch)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(StepComputer, "loss", flaky)
    config = tiny_config(tmp_path)
    config.output.save_every_n_steps = 2
    result, _ = _train(config)
    assert isinstance(result, Failed) and result.kind == "nan"
    assert "step 4" in result.summary and any("learning rate" in a for a in result.advice)
    assert result.last_checkpoint and Path(result.last_checkpoint).name == "tiny-step00000002.safetensors"
    assert Path(result.last_checkpoint).is_file()
    assert json.loads((Path(result.run_dir) / "summary.json").read_text())["status"] == "failed"


def test_out_of_memory_is_reported_with_advice_and_the_next_run_works(tmp_path, monkeypatch):
    def out_of_memory(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    with monkeypatch.context() as patch:
        patch.setattr(StepComputer, "loss", out_of_memory)
        result, _ = _train(tiny_config(tmp_path / "oom"))
    assert isinstance(result, Failed) and result.kind == "oom"
    assert any("gradient_checkpointing" in a for a in result.advice)
    again, _ = _train(tiny_config(tmp_path / "again", steps=2))
    assert isinstance(again, Finished) and again.reason == "completed"


def test_configuration_errors_fail_before_anything_is_written(tmp_path):
    config = tiny_config(tmp_path)
    config.training.batch_size = 0
    result, _ = _train(config)
    assert isinstance(result, Failed) and result.kind == "config"
    assert any("training.batch_size" in a for a in result.advice)
    assert not (tmp_path / "runs").exists()


def test_prodigy_dlr_rises_from_d0(tmp_path):
    # With fresh noise every step Prodigy's estimate moves in jumps; 12 steps see the first.
    config = tiny_config(tmp_path, steps=12)
    config.optimizer.type = OptimizerType.PRODIGY
    config.optimizer.learning_rate = 1.0
    config.schedule.scheduler = config.schedule.scheduler.CONSTANT
    _, sink = _train(config)
    steps = sink.of(StepMetrics)
    d = [e.dlr["unet"] / e.lr["unet"] for e in steps if e.lr["unet"] > 0]  # DLR = d x scheduled lr
    assert d[0] == pytest.approx(config.optimizer.d0)
    assert d[-1] > d[0] and steps[-1].dlr["unet"] > steps[0].dlr["unet"]


def test_tensorboard_logging_uses_kohyas_tags(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = tiny_config(tmp_path, steps=3)
    config.logging.tensorboard = True
    result, _ = _train(config)
    events = accumulator.EventAccumulator(str(Path(result.run_dir) / "tensorboard"))
    events.Reload()
    assert {"loss/current", "loss/average", "lr/unet", "lr/textencoder", "loss/epoch_average"} <= \
        set(events.Tags()["scalars"])
    # 3 steps of a 5-batch epoch: sd-scripts still logs loss/epoch_average (its steps' mean) for
    # the epoch max_train_steps cut short; the run's own records show no epoch loss for it.
    step_losses = [e.value for e in events.Scalars("loss/current")]
    (epoch_average,) = events.Scalars("loss/epoch_average")
    assert len(step_losses) == 3 and epoch_average.value == pytest.approx(sum(step_losses) / 3, rel=1e-5)
    records = [json.loads(line) for line in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("type") == "epoch"]


def test_epoch_checkpoints_keep_only_the_last_n(tmp_path):
    config = tiny_config(tmp_path, steps=20)  # 5 batches per epoch: 4 epochs, the last one final
    config.output.save_every_n_epochs = 1
    config.output.keep_last_n = 2
    result, sink = _train(config)
    kept = sorted(p.name for p in (Path(result.run_dir) / "checkpoints").iterdir())
    assert kept == ["tiny-000002.safetensors", "tiny-000003.safetensors"]
    assert [e.kind for e in sink.of(CheckpointSaved)] == ["epoch", "epoch", "epoch", "final"]


def test_training_can_start_from_an_existing_lora(tmp_path):
    first, _ = _train(tiny_config(tmp_path / "first", steps=3))
    config = tiny_config(tmp_path / "second", steps=2)
    config.network.init_weights = first.lora_path
    result, _ = _train(config)
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    mismatched = tiny_config(tmp_path / "third", steps=2)
    mismatched.network.init_weights = first.lora_path
    mismatched.network.dim = 8
    failed, _ = _train(mismatched)
    assert isinstance(failed, Failed) and failed.kind == "config"
    assert failed.summary.startswith("network.init_weights")


def test_the_epochs_short_accumulation_window_is_a_step_as_planned(tmp_path):
    from core.config.schema import Duration
    from core.data.plan import plan_dataset

    config = tiny_config(tmp_path, steps=1)
    config.training.duration, config.training.max_train_epochs = Duration.EPOCHS, 2
    plan = plan_dataset(config.dataset, config.training)
    # Pick a window that does not divide the epoch, so each epoch ends with a short window.
    accum = next(a for a in (2, 3, 4) if plan.steps.batches_per_epoch % a)
    config.training.gradient_accumulation_steps = accum
    plan = plan_dataset(config.dataset, config.training)
    per_epoch = -(-plan.steps.batches_per_epoch // accum)
    assert plan.steps.steps_per_epoch == per_epoch and plan.steps.max_train_steps == 2 * per_epoch
    result, sink = _train(config)
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    steps = sink.of(StepMetrics)
    assert [m.step for m in steps] == list(range(1, 2 * per_epoch + 1))
    # Each epoch trains its own steps: the short window closes inside its epoch.
    assert [m.epoch for m in steps] == [1] * per_epoch + [2] * per_epoch
    assert result.steps == plan.steps.max_train_steps
