"""The window never freezes: long work runs off the GUI thread, shows progress and cancels.

A timer in the GUI thread measures the longest gap between its ticks while the work runs;
a frozen event loop shows up as a long gap. The bound is deliberately loose, because CI
machines are shared and a busy neighbour (or a full garbage collection) can stall any thread
for a few hundred milliseconds; it still catches the work running on the GUI thread, which
takes seconds there. How smooth the window is while training is measured, not asserted, by
benchmarks/bench_gui_stall.py.
"""

import io
import shutil
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QObject, QTimer

from core.config.schema import SubsetParams, TrainConfig
from core.config.presets import LoadedPreset
from core.training.events import Finished, PhaseProgress, Status
from gui.dataset_tab import DatasetTab
from gui.project import Project
from gui.training_tab import TrainingTab
from tests.engine_fixtures import tiny_config
from tests.gui_fixtures import quiet_training_tab

MAX_GAP_S = 1.5
IMAGES = 10_000
WAIT_MS = 120_000


class GapMeter(QObject):
    """Ticks every 10 ms in the GUI thread and keeps the longest time between two ticks."""

    def __init__(self) -> None:
        super().__init__()
        self.longest = 0.0
        self._last = time.perf_counter()
        self._timer = QTimer(self)
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._timer.start()

    def _on_timer_timeout(self) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self._last)
        self._last = now

    def stop(self) -> None:
        self._timer.stop()


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """10,000 tiny PNGs: one 8x8 image encoded once and written 10,000 times."""
    folder = tmp_path_factory.mktemp("many") / "images"
    folder.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 200)).save(buffer, "PNG")
    data = buffer.getvalue()
    for index in range(IMAGES):
        (folder / f"{index:05d}.png").write_bytes(data)
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.fixture
def dataset_tab(qtbot):
    tab = DatasetTab(Project())
    qtbot.addWidget(tab)
    tab.resize(1200, 850)
    tab.show()
    yield tab
    tab.shutdown()


def _load_folder(tab: DatasetTab, folder: Path) -> None:
    config = TrainConfig()
    config.dataset.subsets = [SubsetParams(image_dir=str(folder))]
    config.dataset.resolution = (64, 64)
    config.dataset.min_bucket_reso, config.dataset.max_bucket_reso = 64, 128
    tab.project.load(LoadedPreset(config, None))


def test_scanning_ten_thousand_images_keeps_the_window_responsive(qtbot, dataset_tab, many_images):
    progress: list[tuple[int, int]] = []
    dataset_tab.scanner.progress.connect(lambda done, total: progress.append((done, total)))
    meter = GapMeter()
    with qtbot.waitSignal(dataset_tab.plan_changed, timeout=WAIT_MS):
        _load_folder(dataset_tab, many_images)
    qtbot.wait(50)  # the thumbnails of the first screen are requested and painted after the plan
    meter.stop()
    assert dataset_tab.plan is not None and len(dataset_tab.plan.images) == IMAGES
    assert dataset_tab.thumbnail_model.rowCount() == IMAGES
    done = [d for d, _ in progress]
    assert done == sorted(done) and len(set(done)) > 10 and progress[-1] == (IMAGES, IMAGES)
    assert meter.longest < MAX_GAP_S, f"the GUI thread was blocked for {meter.longest:.3f} s"


def test_cancel_stops_a_scan_of_ten_thousand_images(qtbot, dataset_tab, many_images):
    progress: list[int] = []
    clicked: list[int] = []

    def on_progress(done: int, total: int) -> None:
        progress.append(done)
        if done and not clicked and dataset_tab.cancel_button.isVisible():
            clicked.append(done)
            dataset_tab.cancel_button.click()

    dataset_tab.scanner.progress.connect(on_progress)
    meter = GapMeter()
    with qtbot.waitSignal(dataset_tab.scanner.cancelled, timeout=WAIT_MS):
        _load_folder(dataset_tab, many_images)
    meter.stop()
    assert clicked and max(progress) < IMAGES and dataset_tab.scan_result is None and dataset_tab.plan is None
    assert dataset_tab.scan_status.text() == "Scan cancelled"
    assert not dataset_tab.scanner.running and dataset_tab.cancel_button.isHidden()
    assert meter.longest < MAX_GAP_S


# ---------------------------------------------------------------- the Training tab


@pytest.fixture
def training_tab(qtbot):
    yield from quiet_training_tab(qtbot, WAIT_MS)


class Gate:
    """Holds the worker thread inside a long phase until the test has acted."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the worker"


def _cancel_during(qtbot, tab: TrainingTab, tmp_path: Path, gate: Gate, wanted) -> tuple[Finished, list]:
    """Start a run; when an event satisfying ``wanted`` arrives while the worker is held,
    press Cancel, then let the worker go on. Returns the result and the events seen."""
    events: list = []

    def on_event(event: object) -> None:
        events.append(event)
        if wanted(event) and tab.cancel_button.isEnabled() and gate.entered.is_set():
            tab.cancel(confirm=False)
            gate.release.set()

    tab._worker.event.connect(on_event)
    meter = GapMeter()
    with qtbot.waitSignal(tab.run_finished, timeout=WAIT_MS) as finished:
        assert tab.start(tiny_config(tmp_path, steps=50))
        # The worker may reach the gate after the event that triggers the cancel: poll.
        qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
        if not gate.release.is_set() and tab.is_running():
            qtbot.waitUntil(lambda: gate.release.is_set() or any(wanted(e) for e in events), timeout=WAIT_MS)
            if not gate.release.is_set():
                tab.cancel(confirm=False)
                gate.release.set()
    meter.stop()
    assert meter.longest < MAX_GAP_S, f"the GUI thread was blocked for {meter.longest:.3f} s"
    return finished.args[0], events


def test_cancel_while_the_model_loads_ends_the_run_without_saving(qtbot, training_tab, tmp_path, monkeypatch):
    from core.models.sd1 import SD1Family

    gate = Gate()
    real = SD1Family.build_demo

    def slow_demo_model(*args, **kwargs):
        gate.hold()  # a large checkpoint takes this long to read
        return real(*args, **kwargs)

    monkeypatch.setattr(SD1Family, "build_demo", slow_demo_model)
    loading = lambda event: isinstance(event, Status) and event.phase == "loading"  # noqa: E731
    result, events = _cancel_during(qtbot, training_tab, tmp_path, gate, loading)
    assert isinstance(result, Finished) and result.reason == "cancelled" and result.lora_path is None
    assert result.steps == 0 and any(loading(e) for e in events)
    assert not any(isinstance(e, PhaseProgress) and e.phase == "caching" and e.done for e in events)
    assert not list(Path(result.run_dir).rglob("*.safetensors"))
    assert training_tab.state == "idle" and training_tab.start_button.isEnabled()


def test_cancel_while_latents_are_cached_ends_the_run_without_saving(qtbot, training_tab, tmp_path, monkeypatch):
    from core.training import setup

    gate = Gate()
    real = setup.vae_encoder

    def held_encoder(*args, **kwargs):
        encode = real(*args, **kwargs)

        def encode_after_the_gate(pixels):
            gate.hold()  # a real VAE takes a while per batch
            return encode(pixels)
        return encode_after_the_gate

    monkeypatch.setattr(setup, "vae_encoder", held_encoder)
    caching = lambda event: isinstance(event, PhaseProgress) and event.phase == "caching"  # noqa: E731
    result, events = _cancel_during(qtbot, training_tab, tmp_path, gate, caching)
    assert isinstance(result, Finished) and result.reason == "cancelled" and result.lora_path is None
    progress = [e for e in events if caching(e)]
    assert progress and progress[0].done == 0 and progress[-1].done < progress[-1].total
    assert result.steps == 0 and not list(Path(result.run_dir).rglob("*.safetensors"))
    assert training_tab.progress.format().startswith("caching latents")
