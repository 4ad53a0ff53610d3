"""The training worker's thread contract, with a stand-in engine so each case takes milliseconds:
the engine runs in the worker's QThread, every event reaches the GUI thread as a queued signal,
``finished`` comes once per run, and waiting never blocks past its timeout."""

import threading

import pytest
from PySide6.QtCore import QObject, QThread, Slot

import core.training.engine as engine_module
from core.training.events import Finished, Status
from gui.worker import TrainingWorker


class FakeTrainer:
    """Records the thread it runs in, emits one event, then blocks until released."""

    ran_in: list[threading.Thread] = []
    qthreads: list[QThread] = []
    release = threading.Event()

    def __init__(self, config, sink, control, **_options):  # noqa: ANN001
        self.sink, self.control, self.name = sink, control, config

    def run(self):  # noqa: ANN201
        FakeTrainer.ran_in.append(threading.current_thread())
        FakeTrainer.qthreads.append(QThread.currentThread())
        self.sink.emit(Status(f"hello from {self.name}"))
        FakeTrainer.release.wait(10)
        reason = "stopped" if self.control.stop_requested else "completed"
        return Finished(reason, "", None, 1, 1, 0.0)


class Recorder(QObject):
    def __init__(self):
        super().__init__()
        self.events, self.results, self.threads = [], [], set()

    @Slot(object)
    def on_event(self, event):
        self.threads.add(QThread.currentThread())
        self.events.append(event)

    @Slot(object)
    def on_finished(self, result):
        self.threads.add(QThread.currentThread())
        self.results.append(result)


@pytest.fixture
def worker(monkeypatch):
    monkeypatch.setattr(engine_module, "Trainer", FakeTrainer)
    FakeTrainer.ran_in = []
    FakeTrainer.qthreads = []
    FakeTrainer.release = threading.Event()
    worker = TrainingWorker()
    recorder = Recorder()
    worker.event.connect(recorder.on_event)
    worker.finished.connect(recorder.on_finished)
    worker.recorder = recorder
    yield worker
    FakeTrainer.release.set()
    worker.wait(10_000)


def test_the_engine_runs_in_the_workers_qthread_and_its_events_arrive_queued_on_the_gui_thread(qtbot, worker):
    worker.start("run-a")
    qtbot.waitUntil(lambda: len(worker.recorder.events) > 0, timeout=5000)
    run_thread = worker.thread_of_run()
    assert isinstance(run_thread, QThread) and run_thread is not QThread.currentThread()
    assert FakeTrainer.qthreads == [run_thread]
    FakeTrainer.release.set()
    qtbot.waitUntil(lambda: len(worker.recorder.results) > 0, timeout=5000)
    assert FakeTrainer.ran_in and FakeTrainer.ran_in[0] is not threading.main_thread()
    assert worker.recorder.threads == {QThread.currentThread()}
    assert [e.text for e in worker.recorder.events] == ["hello from run-a"]
    assert worker.recorder.results[0].reason == "completed" and not worker.is_running()


def test_wait_gives_up_at_its_timeout_while_the_run_goes_on(qtbot, worker):
    worker.start("run-a")
    assert worker.wait(50) is False and worker.is_running()
    worker.stop()
    FakeTrainer.release.set()
    assert worker.wait(5000) is True
    # ``finished`` has been delivered by the time wait returns True, exactly once.
    assert len(worker.recorder.results) == 1 and worker.recorder.results[0].reason == "stopped"


def test_one_run_at_a_time_and_a_second_run_after_the_first(qtbot, worker):
    worker.start("run-a")
    with pytest.raises(RuntimeError, match="already in progress"):
        worker.start("run-b")
    FakeTrainer.release.set()
    assert worker.wait(5000)
    worker.start("run-b")
    assert worker.wait(5000)
    assert [r.reason for r in worker.recorder.results] == ["completed", "completed"]
    assert len(FakeTrainer.qthreads) == 2 and FakeTrainer.qthreads[0] is not FakeTrainer.qthreads[1]


def test_a_failure_before_the_engine_exists_still_finishes_the_run(qtbot, worker, monkeypatch):
    def broken(*_args, **_kwargs):
        raise ImportError("torch is missing")

    monkeypatch.setattr(engine_module, "Trainer", broken)
    worker.start("run-a")
    assert worker.wait(5000)
    failed = worker.recorder.results[0]
    assert "torch is missing" in failed.summary and not worker.is_running()


def test_a_finished_run_hands_its_memory_back(qtbot, worker, monkeypatch):
    """Once a run has ended, the GUI thread collects what it left, CUDA's cache goes back to the
    driver and glibc's free heap to the system (malloc_trim): an idle app holds about what a
    fresh one does, and the next run's peak RAM is its own."""
    import ctypes
    import sys

    import torch

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):  # noqa: ANN001, ANN201
            calls.append(("malloc_trim", pad))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: calls.append(("CDLL", name)) or FakeLibc())
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    worker.start("run-a")
    qtbot.waitUntil(lambda: len(worker.recorder.events) > 0, timeout=5000)
    assert calls == []  # nothing is released while the run goes on
    FakeTrainer.release.set()
    qtbot.waitUntil(lambda: len(worker.recorder.results) > 0, timeout=5000)
    assert calls == [("empty_cache",), ("CDLL", "libc.so.6"), ("malloc_trim", 0)]


def test_the_heap_is_not_trimmed_where_there_is_no_glibc(monkeypatch):
    import ctypes
    import sys

    from gui import worker as worker_module

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("no libc call outside Linux"))
    worker_module._trim_heap()
    monkeypatch.setattr(sys, "platform", "linux")

    def missing(name):  # noqa: ANN001, ANN202 - a musl system has no libc.so.6
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", missing)
    worker_module._trim_heap()  # says nothing, breaks nothing
