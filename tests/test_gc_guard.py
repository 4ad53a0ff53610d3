"""Garbage is collected in the GUI thread only while background threads run (gui.gc_guard)."""

import gc
import threading
import weakref

import pytest

from gui.gc_guard import GuiGarbageCollector


class Node:
    pass


def _cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def collection_on():
    """Start from the interpreter's own regime (the suite's Qt tests run with it taken over)."""
    was = gc.isenabled()
    gc.enable()
    yield
    (gc.enable if was else gc.disable)()


def test_holding_turns_automatic_collection_off_and_release_gives_it_back(qapp, collection_on):
    collector = GuiGarbageCollector()
    collector.hold()
    collector.hold()
    assert not gc.isenabled() and collector.held
    inner = _cycle()
    collector.release()
    assert not gc.isenabled()  # holds nest: one is still held
    assert inner() is None  # but each release collects what the work behind it left
    orphan = _cycle()
    collector.release()
    assert gc.isenabled() and not collector.held
    assert orphan() is None  # the last release collected what was left


def test_release_keeps_collection_off_when_it_was_off_before(qapp, collection_on):
    gc.disable()
    collector = GuiGarbageCollector()
    collector.hold()
    collector.release()
    assert not gc.isenabled()


def test_the_timer_collects_with_the_interpreters_thresholds(qapp, qtbot, collection_on):
    old = gc.get_threshold()
    collector = GuiGarbageCollector()
    collector.hold()
    try:
        gc.collect()
        assert collector.collect_due() is None  # nothing allocated since: nothing due
        gc.set_threshold(50, 10, 10)
        orphan = _cycle()
        keep = [Node() for _ in range(200)]  # allocations past threshold 0
        assert orphan() is not None  # automatic collection is off
        qtbot.waitUntil(lambda: orphan() is None, timeout=3000)  # the GUI thread's timer freed it
        assert keep
    finally:
        gc.set_threshold(*old)
        collector.release()


@pytest.mark.slow
def test_a_gui_run_never_collects_garbage_in_the_training_thread(qtbot, tmp_path, monkeypatch):
    from gui.worker import TrainingWorker
    from tests.engine_fixtures import tiny_config

    threads = []
    real_collect = gc.collect

    def recording_collect(*args):
        threads.append(threading.current_thread().name)
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", recording_collect)
    worker = TrainingWorker()
    results = []
    worker.finished.connect(results.append)
    worker.start(tiny_config(tmp_path, steps=3))
    qtbot.waitUntil(lambda: len(results) == 1, timeout=120_000)
    assert results[0].reason == "completed", getattr(results[0], "traceback", results[0])
    assert threads, "the run's end collects in the GUI thread"
    assert set(threads) == {threading.main_thread().name}
