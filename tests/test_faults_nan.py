"""Issue 9, item 3: a NaN or infinite loss. By default the run stops, names the likely causes
and keeps its last good checkpoint; with training.nonfinite_loss = "skip" the bad step is
left out without touching the weights or the optimizer, counted and reported, until too
many come in a row."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config.schema import NonFinitePolicy
from core.training.run_folder import read_metrics
from core.training.checkpoint import trainable_state
from core.training.engine import Trainer
from core.training.events import CallbackSink, Failed, Finished, ListSink, StepMetrics, StepSkipped
from core.training.step import StepComputer
from tests.engine_fixtures import tiny_config


def poison_losses(monkeypatch, bad_calls, value=float("nan")):
    """Make the loss of the given forward passes (1-based, in call order) non-finite."""
    real_loss = StepComputer.loss
    calls = {"n": 0}

    def loss(self, batch):
        calls["n"] += 1
        result = real_loss(self, batch)
        return result * value if calls["n"] in bad_calls else result

    monkeypatch.setattr(StepComputer, "loss", loss)


class Recorder:
    """Runs a Trainer and snapshots its LoRA weights and optimizer state after each step."""

    def __init__(self, config):
        self.sink = ListSink()
        self.snapshots = {}  # step -> (weights, optimizer state)
        self.trainer = Trainer(config, CallbackSink(self.on_event))

    def on_event(self, event):
        self.sink.emit(event)
        if isinstance(event, (StepMetrics, StepSkipped)):
            trainer = self.trainer
            self.snapshots[event.step] = (trainable_state(trainer.network.trained),
                                          copy.deepcopy(trainer.optimizer.state_dict()["state"]))

    def run(self):
        return self.trainer.run()


def same_tensors(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_nan_loss_stops_naming_the_causes_and_the_last_checkpoint_still_loads(tmp_path, monkeypatch):
    poison_losses(monkeypatch, {5})
    config = tiny_config(tmp_path)
    config.output.save_every_n_steps = 2
    result = Trainer(config, ListSink()).run()
    assert isinstance(result, Failed) and result.kind == "nan", result
    assert "the loss became nan at step 5" in result.summary
    assert "learning rate that is too high" in result.summary and "fp16 VAE" in result.summary
    assert "(images: " in result.summary and ".png" in result.summary  # the batch's images, by name
    assert any("optimizer.learning_rate (now 0.001)" in line for line in result.advice)
    assert any("training.nonfinite_loss to 'skip'" in line for line in result.advice)
    checkpoints = sorted(p.name for p in (Path(result.run_dir) / "checkpoints").iterdir())
    assert checkpoints == ["tiny-step00000002.safetensors", "tiny-step00000004.safetensors"]
    assert Path(result.last_checkpoint).name == "tiny-step00000004.safetensors"
    tensors = load_file(result.last_checkpoint)
    assert tensors and all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert not (Path(result.run_dir) / "tiny.safetensors").exists()  # no final LoRA from broken weights


def test_skip_leaves_a_bad_step_out_without_touching_weights_or_optimizer(tmp_path, monkeypatch):
    poison_losses(monkeypatch, {3}, float("inf"))
    config = tiny_config(tmp_path)
    config.training.nonfinite_loss = NonFinitePolicy.SKIP
    recorder = Recorder(config)
    result = recorder.run()
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", result)
    assert result.steps == 6 and result.skipped_steps == 1
    assert [e.step for e in recorder.sink.of(StepMetrics)] == [1, 2, 4, 5, 6]
    skipped = recorder.sink.of(StepSkipped)
    assert [(e.step, e.in_a_row, e.skipped_total) for e in skipped] == [(3, 1, 1)] and math.isinf(skipped[0].loss)
    before, after, later = recorder.snapshots[2], recorder.snapshots[3], recorder.snapshots[4]
    assert same_tensors(before[0], after[0]) and same_tensors(before[1], after[1])
    assert not same_tensors(after[0], later[0])  # the next good step does train
    assert any("step 3: the loss was inf; step skipped" in e.text for e in recorder.sink.events
               if type(e).__name__ == "Status")
    run = Path(result.run_dir)
    records = list(read_metrics(run / "metrics.jsonl"))
    assert [r["step"] for r in records if r["type"] == "step"] == [1, 2, 4, 5, 6]
    assert [(r["step"], r["loss"]) for r in records if r["type"] == "skipped"] == [(3, None)]  # JSON has no inf
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 1


def test_skip_with_gradient_accumulation_drops_the_whole_step(tmp_path, monkeypatch):
    poison_losses(monkeypatch, {3})  # the first micro-batch of step 2; the second one is fine
    config = tiny_config(tmp_path, steps=3)
    config.training.batch_size = 1  # 10 batches per epoch: the three steps' windows all fit in epoch 1
    config.training.gradient_accumulation_steps = 2
    config.training.nonfinite_loss = NonFinitePolicy.SKIP
    recorder = Recorder(config)
    result = recorder.run()
    assert isinstance(result, Finished) and result.skipped_steps == 1, getattr(result, "traceback", result)
    assert [e.step for e in recorder.sink.of(StepSkipped)] == [2]
    assert same_tensors(recorder.snapshots[1][0], recorder.snapshots[2][0])
    assert same_tensors(recorder.snapshots[1][1], recorder.snapshots[2][1])
    assert not same_tensors(recorder.snapshots[2][0], recorder.snapshots[3][0])


def test_too_many_bad_steps_in_a_row_stop_the_run_anyway(tmp_path, monkeypatch):
    poison_losses(monkeypatch, set(range(3, 100)))
    config = tiny_config(tmp_path, steps=10)
    config.training.nonfinite_loss = NonFinitePolicy.SKIP
    config.training.nonfinite_skip_limit = 3
    config.output.save_every_n_steps = 2
    sink = ListSink()
    result = Trainer(config, sink).run()
    assert isinstance(result, Failed) and result.kind == "nan"
    assert [e.step for e in sink.of(StepSkipped)] == [3, 4]
    assert "at step 5: 3 bad steps in a row" in result.summary
    # The checkpoint at step 4 holds the weights of step 2 (3 and 4 were skipped): still good.
    assert Path(result.last_checkpoint).name == "tiny-step00000004.safetensors"
    assert json.loads((Path(result.run_dir) / "summary.json").read_text())["skipped_steps"] == 2


def test_the_policy_is_a_schema_parameter_that_presets_check():
    from core.config.schema import TrainingParams
    from core.config.params import spec_for
    from core.config.presets import PresetError, loads_preset

    loaded = loads_preset('schema_version = 1\n[training]\nnonfinite_loss = "skip"\nnonfinite_skip_limit = 4\n')
    assert loaded.config.training.nonfinite_loss is NonFinitePolicy.SKIP
    assert loaded.config.training.nonfinite_skip_limit == 4
    spec = spec_for(TrainingParams, "nonfinite_loss")
    assert spec.choices == ("stop", "skip") and spec.default is NonFinitePolicy.STOP and "NaN" in spec.info.help
    with pytest.raises(PresetError, match="training.nonfinite_loss"):
        loads_preset('schema_version = 1\n[training]\nnonfinite_loss = "ignore"\n')
    with pytest.raises(PresetError, match="training.nonfinite_skip_limit"):
        loads_preset('schema_version = 1\n[training]\nnonfinite_skip_limit = 0\n')
