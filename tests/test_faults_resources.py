"""Issue 9, items 2 and 4: the disk fills up while saving, and the GPU runs out of memory.
Each run reports what happened with advice in this run's values, keeps its last good
checkpoint, gives its memory back, and the next run in the same process works."""

import errno
import gc
import json
import os
import tempfile
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config.schema import LatentCache, MixedPrecision
from core.training.run_folder import MetricsWriter
from core.training.engine import Trainer
from core.training.errors import diagnose, out_of_memory_advice
from core.training.events import Failed, Finished, ListSink
from core.training.faults import release_memory
from core.training.step import StepComputer
from tests.engine_fixtures import tiny_config


def fill_the_disk_at(monkeypatch, file_name):
    """Atomic writes of ``file_name`` fail like a full disk: half the bytes reach the
    temporary file, then write() raises ENOSPC (which, as in reality, names no file)."""
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    doomed_fds = set()

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if Path(name).name.startswith(f".{file_name}."):
            doomed_fds.add(fd)
        return fd, name

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if fd in doomed_fds:
            doomed_fds.discard(fd)  # the number is reused by later files
            return FullDisk(handle)
        return handle

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)


def test_a_full_disk_at_a_checkpoint_is_reported_and_the_previous_checkpoint_kept(tmp_path, monkeypatch):
    config = tiny_config(tmp_path / "full")
    config.output.save_every_n_steps = 2
    config.output.save_state = True
    with monkeypatch.context() as patch:
        fill_the_disk_at(patch, "tiny-step00000004.safetensors")
        result = Trainer(config, ListSink()).run()
    assert isinstance(result, Failed) and result.kind == "disk", result
    assert "No space left on device" in result.summary and "tiny-step00000004.safetensors" in result.summary
    assert "MB are free on that drive" in result.summary
    assert any("output.output_dir" in line for line in result.advice)
    run = Path(result.run_dir)
    assert Path(result.last_checkpoint) == run / "checkpoints" / "tiny-step00000002.safetensors"
    assert load_file(result.last_checkpoint)  # the last good checkpoint still loads
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["tiny-step00000002.safetensors"]
    assert [p.name for p in (run / "state").iterdir()] == ["step-00000002.safetensors"]  # resumable from there
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    again = Trainer(tiny_config(tmp_path / "again", steps=2), ListSink()).run()
    assert isinstance(again, Finished) and again.reason == "completed"


def test_a_full_disk_at_the_final_save_fails_the_run_without_a_broken_file(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        fill_the_disk_at(patch, "tiny.safetensors")
        result = Trainer(tiny_config(tmp_path, steps=2), ListSink()).run()
    assert isinstance(result, Failed) and result.kind == "disk" and result.last_checkpoint is None
    run = Path(result.run_dir)
    assert not list(run.glob("*.safetensors")) and not list(run.glob(".*.tmp"))


def test_a_full_disk_while_appending_metrics_names_the_file(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")

    class FullFile:
        closed = False

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real, writer._file = writer._file, FullFile()
    with pytest.raises(OSError) as raised:
        writer.write({"type": "step", "step": 1})
    real.close()
    assert raised.value.filename == str(tmp_path / "metrics.jsonl")
    diagnosis = diagnose(raised.value, tiny_config(tmp_path))
    assert diagnosis.kind == "disk" and "metrics.jsonl" in diagnosis.summary


def out_of_memory(self, batch):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")


def test_out_of_memory_names_this_runs_settings_and_frees_the_model(tmp_path, monkeypatch):
    models = []

    def remember_then_fail(self, batch):
        models.append(weakref.ref(self.c.unet))
        out_of_memory(self, batch)

    monkeypatch.setattr(StepComputer, "loss", remember_then_fail)
    config = tiny_config(tmp_path / "oom")
    trainer = Trainer(config, ListSink())
    result = trainer.run()
    assert isinstance(result, Failed) and result.kind == "oom"
    assert result.summary.startswith("Out of GPU memory with batch size 2, resolution 64x64, gradient "
                                     "checkpointing off, latent cache 'memory'")
    assert result.advice[0].startswith("lower training.batch_size from 2 to 1")
    assert any("training.gradient_checkpointing (now off)" in line for line in result.advice)
    gc.collect()
    assert models and models[0]() is None  # nothing (trainer, traceback, accelerate) keeps the model alive
    assert trainer.network is None and trainer.optimizer is None


def test_out_of_memory_advice_quotes_the_values_to_change(tmp_path):
    config = tiny_config(tmp_path)
    config.training.batch_size, config.training.gradient_accumulation_steps = 8, 2
    config.dataset.latent_cache = LatentCache.OFF
    config.dataset.resolution = (768, 768)
    config.training.mixed_precision = MixedPrecision.NO
    advice = "\n".join(out_of_memory_advice(config))
    assert "lower training.batch_size from 8 to 4" in advice and "from 2 to 4" in advice
    assert "set dataset.latent_cache from 'off' to 'memory' or 'disk'" in advice
    assert "lower dataset.resolution from 768x768 to 512x512" in advice
    assert "set training.mixed_precision from 'no'" in advice
    config.training.batch_size, config.training.gradient_checkpointing = 1, True
    config.dataset.latent_cache, config.dataset.resolution = LatentCache.DISK, (512, 512)
    config.training.mixed_precision, config.network.train_text_encoder = MixedPrecision.BF16, False
    assert out_of_memory_advice(config) == ("this run already uses the memory-saving settings: close other "
                                            "programs that use the GPU, or use a card with more memory",)


def test_release_memory_collects_garbage_then_empties_the_cuda_cache(monkeypatch):
    calls = []

    class Cycle:
        pass

    cycle = Cycle()
    cycle.self = cycle  # only the cycle collector frees it
    alive = weakref.ref(cycle)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache", alive() is None)))
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    gc.enable()
    gc.set_threshold(10**9)  # collection on, but nothing automatic: only release_memory collects
    try:
        del cycle
        assert alive() is not None
        release_memory()
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if enabled else gc.disable)()
    assert calls == ["synchronize", ("empty_cache", True)]


def test_release_memory_leaves_collection_to_a_host_that_took_it_over(monkeypatch):
    """The GUI turns automatic collection off and collects in its own thread after the run
    (gui.gc_guard, gui.worker): the engine, in the training thread, must not collect then."""
    calls = []

    class Cycle:
        pass

    cycle = Cycle()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    enabled = gc.isenabled()
    gc.disable()
    try:
        del cycle
        release_memory()
        assert alive() is not None and calls == []
    finally:
        (gc.enable if enabled else gc.disable)()
        gc.collect()
