"""Peak memory is of this run and of each phase: a queue or a sweep in one process must not
report the largest earlier run (torch.cuda's peak is process-wide until it is reset).
GPU figures come from a stubbed torch.cuda whose counters behave like the allocator's."""

import json
from pathlib import Path

import pytest
import torch

from core.studies.compare import comparison_table
from core.studies.run_index import load_run
from core.training import memory
from core.training.checkpoint import TrainingState, load_state, save_state
from core.training.engine import Trainer
from core.training.events import Finished, ListSink, StepMetrics
from core.training.memory import PhasePeaks, RssSource
from tests.engine_fixtures import tiny_config

MB = 1024 * 1024
CUDA = torch.device("cuda")


class FakeCuda:
    """The caching allocator's counters: peaks since the last reset; reserved is what is
    allocated plus a fixed cache."""

    CACHE = 64 * MB

    def __init__(self) -> None:
        self.allocated = 0
        self.peak_allocated = self.peak_reserved = 0
        self.resets = 0

    @property
    def reserved(self) -> int:
        return self.allocated + self.CACHE if self.allocated else 0

    def allocate(self, mb: float) -> None:
        self.allocated += int(mb * MB)
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def free(self, mb: float) -> None:
        self.allocated -= int(mb * MB)

    def spike(self, mb: float) -> None:
        """A transient allocation: an activation freed before anyone looks."""
        self.allocate(mb)
        self.free(mb)

    def reset_peak_memory_stats(self, device=None) -> None:
        self.resets += 1
        self.peak_allocated, self.peak_reserved = self.allocated, self.reserved

    def install(self, monkeypatch) -> "FakeCuda":
        for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
            attribute = {"memory_allocated": "allocated", "memory_reserved": "reserved",
                         "max_memory_allocated": "peak_allocated", "max_memory_reserved": "peak_reserved"}[name]
            monkeypatch.setattr(torch.cuda, name, lambda device=None, a=attribute: getattr(self, a))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset_peak_memory_stats)
        return self


@pytest.fixture
def cuda(monkeypatch):
    return FakeCuda().install(monkeypatch)


# ---------------------------------------------------------------- the tracker


def test_a_second_run_reports_its_own_peak_not_the_first_runs(cuda):
    first = PhasePeaks(CUDA)
    first.enter("training")
    cuda.spike(9000)
    assert first.figures()["peak"] == 9000
    second = PhasePeaks(CUDA)  # the next run of a queue, same process
    second.enter("training")
    cuda.spike(3000)
    figures = second.figures()
    assert figures["peak"] == 3000 and figures["run_peak"] == 3000
    assert figures["peak_reserved"] == 3000 + 64 and figures["kind"] == "cuda"


def test_each_phase_keeps_its_own_peak_and_a_phase_entered_again_keeps_its_maximum(cuda):
    peaks = PhasePeaks(CUDA)
    peaks.enter("loading")
    cuda.allocate(2000)  # the model stays
    peaks.enter("caching")
    cuda.spike(5000)  # the VAE encoding a batch
    peaks.enter("training")
    cuda.spike(1500)
    peaks.enter("sampling")
    cuda.spike(800)
    peaks.enter("training")
    cuda.spike(1000)  # lower than the first training stretch
    peaks.enter("paused")  # a pause is no phase of its own
    assert peaks.phase == "training"
    assert peaks.by_phase() == {
        "loading": {"allocated_mb": 2000, "reserved_mb": 2064},
        "caching": {"allocated_mb": 7000, "reserved_mb": 7064},
        "training": {"allocated_mb": 3500, "reserved_mb": 3564},
        "sampling": {"allocated_mb": 2800, "reserved_mb": 2864},
    }
    assert peaks.overall() == (7000, 7064)
    figures = peaks.figures()
    assert (figures["allocated"], figures["peak"], figures["run_peak"]) == (2000, 3500, 7000)


def test_a_resumed_run_keeps_the_peaks_of_its_earlier_sessions_of_the_same_kind(cuda):
    peaks = PhasePeaks(CUDA)
    peaks.take_earlier({"training": {"allocated_mb": 4000.0, "reserved_mb": 4500.0}}, "cuda", 4000.0)
    peaks.enter("training")
    cuda.spike(1000)
    assert peaks.by_phase()["training"] == {"allocated_mb": 4000.0, "reserved_mb": 4500.0}
    other = PhasePeaks(CUDA)  # a state saved by a CPU run holds RSS, not VRAM
    other.take_earlier({"training": {"rss_mb": 9000.0}}, "rss", 9000.0)
    assert other.overall() == (0.0, 0.0)


@pytest.mark.parametrize("saved", [
    "lots", ["training"], {"training": "big"}, {"training": {"allocated_mb": "big"}},
    {"training": {"allocated_mb": float("nan")}}, {"training": {"allocated_mb": -5}}, {7: {"allocated_mb": 1.0}},
    {"training": {"allocated_mb": True}}, {"training": {"allocated_mb": 10**400}},
])
def test_damaged_saved_peaks_are_left_out(cuda, saved):
    peaks = PhasePeaks(CUDA)
    peaks.take_earlier(saved, "cuda", "also damaged")
    assert peaks.by_phase() == {} and peaks.overall() == (0.0, 0.0)


def test_the_peaks_go_through_a_saved_training_state(tmp_path):
    state = TrainingState(step=3, epoch=1, batch_in_epoch=3, wall_seconds=1.0, lora={}, optimizer={}, scheduler={},
                          generator=torch.Generator().get_state(), torch_rng=torch.get_rng_state(),
                          python_rng=None, peak_memory_mb=7000.0, memory_kind="cuda",
                          peak_by_phase={"training": {"allocated_mb": 3500.0, "reserved_mb": 3564.0}})
    loaded = load_state(save_state(tmp_path, state))
    assert loaded.peak_by_phase == {"training": {"allocated_mb": 3500.0, "reserved_mb": 3564.0}}
    assert loaded.memory_kind == "cuda"


# ---------------------------------------------------------------- a CPU run: RSS


def test_on_linux_a_phase_peak_of_rss_catches_a_spike_no_step_saw():
    source = RssSource()
    if source.method != memory.RSS_HWM_METHOD or not Path("/proc/self/clear_refs").exists():
        pytest.skip("the kernel's resettable high-water mark is Linux-only")
    peaks = PhasePeaks(torch.device("cpu"))
    peaks.enter("caching")
    before = peaks.figures()["allocated"]
    block = b"\x01" * (200 * MB)  # touched, so resident
    del block
    peaks.enter("training")
    assert peaks.method == memory.RSS_HWM_METHOD
    assert peaks.by_phase()["caching"]["rss_mb"] >= before + 150
    assert peaks.by_phase()["training"]["rss_mb"] < before + 150  # reset at the phase change
    assert peaks.overall()[1] is None  # no "reserved" on a CPU


def test_without_the_high_water_mark_rss_peaks_are_sampled_and_say_so(tmp_path):
    source = RssSource(proc=tmp_path / "no-proc")
    source.reset()
    assert source.method == memory.RSS_SAMPLED_METHOD
    now = source.now()[0]
    assert source.peak()[0] >= now > 0


# ---------------------------------------------------------------- two runs of the engine


def _run_in_fake_cuda(tmp_path, monkeypatch, cuda, training_mb: float, caching_mb: float):
    """A tiny CPU run whose memory is measured on the stubbed CUDA card: loading keeps 500 MB,
    caching a batch spikes ``caching_mb``, each training step ``training_mb``, a sample 200."""
    from core.models.sd1 import SD1Family
    from core.training import setup, step

    monkeypatch.setattr(memory, "source_for", lambda device: memory.CudaSource(CUDA))
    real_load, real_encoder, real_step = setup.load_network, setup.vae_encoder, step.train_micro_batch

    def load_network(*args, **kwargs):
        network = real_load(*args, **kwargs)
        cuda.allocate(500)
        return network

    def vae_encoder(*args, **kwargs):
        encode = real_encoder(*args, **kwargs)

        def spiking(*a, **k):
            cuda.spike(caching_mb)
            return encode(*a, **k)
        return spiking

    def train_micro_batch(*args, **kwargs):
        cuda.spike(training_mb)
        return real_step(*args, **kwargs)

    def generate(*args, **kwargs):
        from PIL import Image
        cuda.spike(200)
        return Image.new("RGB", (8, 8))

    with monkeypatch.context() as patch:
        patch.setattr(setup, "load_network", load_network)
        patch.setattr(setup, "vae_encoder", vae_encoder)
        patch.setattr(step, "train_micro_batch", train_micro_batch)
        patch.setattr(SD1Family, "generate", generate)
        config = tiny_config(tmp_path, steps=2)
        config.sampling.prompts, config.sampling.at_step_0 = "a kiln", True
        sink = ListSink()
        result = Trainer(config, sink).run()
    cuda.free(500)  # the run released its model
    assert isinstance(result, Finished) and result.reason == "completed", getattr(result, "traceback", "")
    return Path(result.run_dir), sink


def test_two_runs_in_one_process_each_record_their_own_phase_peaks(tmp_path, monkeypatch, cuda):
    big, _ = _run_in_fake_cuda(tmp_path / "big", monkeypatch, cuda, training_mb=9000, caching_mb=3000)
    small, sink = _run_in_fake_cuda(tmp_path / "small", monkeypatch, cuda, training_mb=1000, caching_mb=300)

    summary = json.loads((small / "summary.json").read_text())
    assert summary["memory_kind"] == "cuda" and summary["memory_method"] == memory.CUDA_METHOD
    assert summary["peak_by_phase"]["loading"]["allocated_mb"] == 500
    assert summary["peak_by_phase"]["caching"]["allocated_mb"] == 800
    assert summary["peak_by_phase"]["training"] == {"allocated_mb": 1500, "reserved_mb": 1564}
    assert summary["peak_by_phase"]["sampling"]["allocated_mb"] == 700
    assert summary["peak_vram_mb"] == 1500 and summary["peak_reserved_mb"] == 1564

    steps = sink.of(StepMetrics)
    assert [(s.memory_peak_mb, s.memory_peak_reserved_mb, s.memory_run_peak_mb) for s in steps] == \
        [(1500, 1564, 1500)] * 2

    first = json.loads((big / "summary.json").read_text())
    assert first["peak_by_phase"]["training"]["allocated_mb"] == 9500 and first["peak_vram_mb"] == 9500

    table = comparison_table([load_run(big), load_run(small)])
    columns = ["training peak VRAM allocated (MB)", "training peak VRAM reserved (MB)", "peak VRAM (MB)"]
    assert [[row[table.columns.index(c)] for c in columns] for row in table.rows] == \
        [[9500, 9564, 9500], [1500, 1564, 1500]]
